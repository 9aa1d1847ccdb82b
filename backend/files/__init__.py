"""Files on disk: where uploads are stored, and how CSV, JSON Lines and XLSX are read."""
