"""Small helpers with one job each: process pools (`parallel`), progress lines
(`progress`) and atomic file writes (`files`)."""
