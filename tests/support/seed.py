"""The product note's example, as data: its insights documents and API responses, copied field for field."""

from __future__ import annotations

from typing import Any

POST_ID = "01KA8MNE2DT1E31F8Z3TJHF96E"
IG_MEDIA_ID = "18107758234627017"
IG_PERMALINK = "https://www.instagram.com/p/DRJ1nlKDgY9/"
FB_POST_ID = "747917475065823_122104567890123"
IMAGE_ERROR = "Facebook photo upload failed: 400 - Missing or invalid image file"

# Copied from seed/smart-retry-publishing.md, "Data Structure".
INSIGHTS_AFTER_FAILED_ATTEMPT: dict[str, Any] = {
    "insights": {
        "publish_results": [
            {"platform": "facebook", "success": False,
             "error": "Facebook photo upload failed: 400 - Missing or invalid image file"},
            {"platform": "instagram", "success": True, "postId": "18107758234627017",
             "permalink": "https://www.instagram.com/p/DRJ1nlKDgY9/"},
        ],
        "published_at": "2025-11-17T10:10:13.151Z",
        "instagram_media_id": "18107758234627017",
        "instagram_permalink": "https://www.instagram.com/p/DRJ1nlKDgY9/",
    },
    "status": "failed",
    "error_message": "facebook: Facebook photo upload failed: 400 - Missing or invalid image file",
}

INSIGHTS_AFTER_SUCCESSFUL_RETRY: dict[str, Any] = {
    "insights": {
        "publish_results": [
            {"platform": "facebook", "success": True, "postId": "747917475065823_122104567890123"},
            {"platform": "instagram", "success": True, "postId": "18107758234627017",
             "permalink": "https://www.instagram.com/p/DRJ1nlKDgY9/"},
        ],
        "published_at": "2025-11-17T10:10:13.151Z",
        "last_retry_at": "2025-11-17T10:15:30.456Z",
        "facebook_post_id": "747917475065823_122104567890123",
        "instagram_media_id": "18107758234627017",
        "instagram_permalink": "https://www.instagram.com/p/DRJ1nlKDgY9/",
    },
    "status": "posted",
    "error_message": None,
    "post_url": "https://www.facebook.com/747917475065823_122104567890123",
}

# Copied from the seed's "API Response" section.
RESPONSE_FIRST_ATTEMPT: dict[str, Any] = {
    "success": False,
    "post": {
        "id": "01KA8MNE2DT1E31F8Z3TJHF96E",
        "status": "failed",
        "error_message": "facebook: Facebook photo upload failed: 400 - Missing or invalid image file",
    },
    "results": {
        "facebook": {"platform": "facebook", "success": False,
                     "error": "Facebook photo upload failed: 400 - Missing or invalid image file"},
        "instagram": {"platform": "instagram", "success": True, "postId": "18107758234627017",
                      "permalink": "https://www.instagram.com/p/DRJ1nlKDgY9/"},
    },
}

RESPONSE_RETRY_ATTEMPT: dict[str, Any] = {
    "success": True,
    "post": {"id": "01KA8MNE2DT1E31F8Z3TJHF96E", "status": "posted", "error_message": None},
    "results": {
        "facebook": {"platform": "facebook", "success": True, "postId": "747917475065823_122104567890123"},
        "instagram": {"platform": "instagram", "success": True, "postId": "18107758234627017",
                      "permalink": "https://www.instagram.com/p/DRJ1nlKDgY9/"},
    },
    "retry_info": {"is_retry": True, "previous_attempts": 2, "retried_platform": "facebook"},
}
