"""Outbox delivery: claims due messages, renders them, sends them within Telegram's limits."""
