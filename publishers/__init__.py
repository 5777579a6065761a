"""Platform clients (Facebook Page, Instagram), error classification and the sandbox Graph API."""
