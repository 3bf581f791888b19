"""Adagrad with heavy-ball momentum and row-sparse updates (spec B9): not written yet.

It arrives with the faithful-core issue (#3). Nothing here runs yet.
"""
