"""Small apps that differ only in their result backend, as users configure them."""
