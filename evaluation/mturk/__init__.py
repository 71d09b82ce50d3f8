"""Mechanical Turk: HITs through the API (ExternalQuestion) and the requester website's batch route.

- `api`: the boto3 client (sandbox unless live) and one-line errors for failed calls;
- `hits`: the HIT lifecycle: parameters, cost, create, status, sync, expire;
- `pay`: approve, reject and bonus;
- `batch`: export a batch for the requester website and import its results file.

Everything that touches MTurk takes a boto3 client as its first argument, so tests hand in a
client wrapped in botocore's Stubber and the real API model checks every call.
"""
from evaluation.mturk.api import (  # noqa: F401
    LIVE_ENDPOINT, LIVE_WORKER_SITE, SANDBOX_ENDPOINT, SANDBOX_WORKER_SITE, environment, get_experiment, make_client,
    marketplace,
)
from evaluation.mturk.batch import (  # noqa: F401
    BATCH_CSV, BATCH_LAYOUT, BATCH_RECORD, ImportReport, answer_field, export_batch, import_results,
)
from evaluation.mturk.hits import (  # noqa: F401
    GONE, ExpireReport, HitSpec, create_hits, expire, hit_cost, hit_status, listeners_needed, parse_locales, parse_reward, pending_indices,
    preview_url, recorded, request_token, require_live, sync,
)
from evaluation.mturk.pay import (  # noqa: F401
    PayReport, approve, bonus, bonus_cost, check_bonus_reason, bonus_token, bonuses_due, reject, rejection_feedback, rejections_due,
)
