"""Reproductions of hostile input and hung dependencies (issue 13): each must stay fixed."""
