"""Golden-set canaries: catch a model server that answers 200 with wrong numbers (issue 7)."""
