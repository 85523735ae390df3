"""Server-rendered dashboard: login, project switcher, one section per feature."""
