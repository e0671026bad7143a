"""HTTP adapters: parse and convert each API, then delegate to the dataplane."""
