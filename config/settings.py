"""Hearsay settings: every deployment-specific value comes from the environment."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


DEBUG = _flag("DEBUG", False)
DATA_DIR = Path(os.environ.get("HEARSAY_DATA_DIR") or BASE_DIR / "var")  # an empty value is unset, not "here"
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    """SECRET_KEY from the environment, else a random key made on first run and kept in the data folder.

    Never a published default: sessions, CSRF and the participant tokens carried in URLs are
    signed with it. Servers that share a database must share the key: set SECRET_KEY there.
    """
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    path = DATA_DIR / "secret_key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text(encoding="ascii").strip()
        if len(key) < 50:
            raise ImproperlyConfigured(f"{path} holds no usable secret key: delete it to make a new one, or set SECRET_KEY")
        return key
    key = secrets.token_urlsafe(50)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key + "\n")
    return key


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver,[::1]").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "generation",
    "evaluation",
    "analysis",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "config.middleware.RequestSanityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "config.middleware.ParticipantCsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "evaluation.answer_context.answer_contract",
            ],
        },
    },
]

WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

try:
    DATABASES = {
        "default": dj_database_url.parse(
            os.environ.get("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'hearsay.sqlite3'}",
            conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "0")),
        )
    }
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL or DB_CONN_MAX_AGE is not valid ({exc})") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 30

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT") or DATA_DIR / "staticfiles")
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
# The survey's script gates answering: a forgotten collectstatic must not leave listeners with a dead page.
WHITENOISE_USE_FINDERS = True

MEDIA_URL = "media/"
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT") or DATA_DIR / "media")



def _file_storage() -> dict:
    """Where stimulus audio lives: this disk (default), an S3 bucket ("s3"), or any Django storage class.

    The app always serves the audio itself, under per-trial tokens, so plays are counted
    and a bucket stays private: listeners never see its address or the file names.
    """
    backend = os.environ.get("HEARSAY_FILE_STORAGE", "filesystem")
    if backend == "filesystem":
        return {"BACKEND": "django.core.files.storage.FileSystemStorage"}
    if backend != "s3":
        return {"BACKEND": backend}
    bucket = os.environ.get("HEARSAY_S3_BUCKET", "")
    if not bucket:
        raise ImproperlyConfigured("HEARSAY_FILE_STORAGE=s3 needs HEARSAY_S3_BUCKET, the bucket that holds the audio")
    options = {
        "bucket_name": bucket,
        "location": os.environ.get("HEARSAY_S3_PREFIX", "hearsay"),
        "default_acl": "private",
        "file_overwrite": False,
        "querystring_auth": True,
    }
    for option, variable in (("endpoint_url", "HEARSAY_S3_ENDPOINT_URL"), ("region_name", "AWS_DEFAULT_REGION")):
        if os.environ.get(variable):
            options[option] = os.environ[variable]
    return {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options}


STORAGES = {
    "default": _file_storage(),
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("DATA_UPLOAD_MAX_MEMORY_SIZE", str(64 * 1024)))

SESSION_COOKIE_SECURE = _flag("SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_SAMESITE = "None" if SESSION_COOKIE_SECURE else "Lax"
CSRF_COOKIE_SAMESITE = SESSION_COOKIE_SAMESITE
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if _flag("BEHIND_HTTPS_PROXY", False) else None

LOGIN_URL = "admin:login"

# Mechanical Turk's sites may frame the survey and receive its externalSubmit; more origins
# (e.g. a local stand-in for tests) come from HEARSAY_MTURK_ORIGINS, comma-separated.
MTURK_FRAME_ORIGINS = ["https://www.mturk.com", "https://worker.mturk.com", "https://workersandbox.mturk.com", "https://sandbox.mturk.com"]
MTURK_SUBMIT_HOSTS = ["https://www.mturk.com", "https://workersandbox.mturk.com"]
_extra_mturk = [o.strip().rstrip("/") for o in os.environ.get("HEARSAY_MTURK_ORIGINS", "").split(",") if o.strip()]
MTURK_FRAME_ORIGINS += _extra_mturk
MTURK_SUBMIT_HOSTS += _extra_mturk

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "WARNING")},
}
