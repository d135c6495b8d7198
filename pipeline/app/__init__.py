"""The web app (`server`): draw or upload an image, see the champion's answer; compare runs.

Templates and static files are in web/. Imports `core` and `tracking` (the model it serves comes
from `tracking.choose`, as `pipeline.predict`'s does).
"""
