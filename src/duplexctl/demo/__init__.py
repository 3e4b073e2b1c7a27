"""`duplexctl demo`: a real spoken conversation on the embedded default, with a barge-in."""
