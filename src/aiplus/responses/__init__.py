"""The Responses API's own room: stored responses per organization, items and chat messages, retention."""
