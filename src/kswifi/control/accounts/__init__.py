"""A person's account as a whole: deleting it touches every domain they have data in."""
