from handler.storage.s3 import *  # noqa: F403
