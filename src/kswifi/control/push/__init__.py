"""Web Push to the installed web app: subscriptions, VAPID keys, queued notifications."""
