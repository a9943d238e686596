"""`mt3 serve`: the HTTP server (`server`) and its upload page (`upload_page`)."""
