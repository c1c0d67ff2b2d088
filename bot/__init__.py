"""Rastau chatbot: patients, doctors and clinic admins on Telegram, in Kazakh and Russian."""
