"""Plain value types and the wire format shared by every stage, sink and the API."""
