"""Feature matchers: SuperPoint, SuperGlue, the offline zoo and the Matcher interface they share."""
