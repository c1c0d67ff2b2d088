"""Rastau's domain: visits, one-time codes, face references and their storage.

Imports neither aiogram nor aiohttp, so the server and the bot can share it without sharing each other.
"""
