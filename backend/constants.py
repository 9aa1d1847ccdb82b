"""Every name both sides of the queue share: queues, task names, states and Redis keys.

Routers submit by task name and never import task code, so the names live here, in one
place the API process and the workers both read (the arq pattern).
"""

from enum import StrEnum


class Queue(StrEnum):
    DATABASE = "database"
    DATA_SYNC = "data_sync"
    SCHEDULED = "scheduled"
    DEFAULT = "default"


ALL_QUEUES: tuple[str, ...] = tuple(q.value for q in Queue)


class TaskName(StrEnum):
    HEALTH_CHECK = "system.health_check"
    NOOP = "system.noop"
    SLEEP = "system.sleep"
    FLAKY = "system.flaky"
    INIT_DATABASE = "system.init_database"
    SAVE_CONVERSATION = "conversation.save_conversation"
    GET_CONVERSATION_HISTORY = "conversation.get_conversation_history"
    DELETE_CONVERSATION_HISTORY = "conversation.delete_conversation_history"
    RUN_TURN = "conversation.run_turn"
    RECOVER = "system.recover"
    PURGE_CONVERSATIONS = "cleanup.purge_conversations"
    PURGE_TASK_RUNS = "cleanup.purge_task_runs"
    SWEEP_UPLOADS = "cleanup.sweep_uploads"
    REGISTER_FILE = "data_sync.register_file"
    SCAN_INBOX = "data_sync.scan_inbox"
    SYNC_FILE = "data_sync.sync_file"
    FIND_FILES = "data_sync.find_files"
    LIST_FILES = "data_sync.list_files"
    DATASET_SUMMARY = "data_sync.dataset_summary"
    LIST_RECORDS = "data_sync.list_records"
    LIST_NOTIFICATIONS = "notifications.list"
    EXPORT_DATASET = "exports.export_dataset"
    GET_EXPORT = "exports.get_export"
    PURGE_EXPORTS = "cleanup.purge_exports"
    RUN_REPORT = "reports.run_report"
    SCHEDULED_REPORT = "reports.scheduled_report"


class State(StrEnum):
    PENDING = "PENDING"
    STARTED = "STARTED"
    PROGRESS = "PROGRESS"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"


FINAL_STATES: frozenset[str] = frozenset({State.SUCCESS, State.FAILURE, State.REVOKED})
# A row in one of these states is owned by whoever holds its lease (see runtime/ledger.py).
RUNNING_STATES: frozenset[str] = frozenset({State.STARTED, State.PROGRESS})
# A row in one of these states waits for a message (or a local slot) to run it.
WAITING_STATES: frozenset[str] = frozenset({State.PENDING, State.RETRY})


# Names a client (or an inbox folder) may give a dataset and its key columns; the API
# validates requests with them and the inbox scan validates folder names.
DATASET_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
COLUMN_PATTERN = r"^[^\x00-\x1f,]{1,200}$"
# A column a database query names (an export's filter, a report's group-by and aggregates):
# also no double quote or backslash, which SQLite's JSON paths cannot escape (a backslash
# would match nothing on SQLite and the right key on PostgreSQL).
QUERY_COLUMN_PATTERN = r'^[^\x00-\x1f,"\\]{1,200}$'

# Exports and reports (backend/tasks/exports.py, backend/tasks/reports.py).
EXPORT_FORMATS = ("csv", "xlsx", "jsonl")
EXPORT_ENCODINGS = ("utf-8", "utf-8-sig", "gb18030")
# Excel's last row (1,048,576) less the header: a larger XLSX export fails before it starts.
XLSX_MAX_DATA_ROWS = 1_048_575


class Executor(StrEnum):
    CELERY = "celery"
    LOCAL = "local"


# Redis keys written by syncq itself (Celery's and kombu's own keys are theirs).
REDIS_PREFIX = "syncq:"
# Sorted set of live worker node names scored by their last heartbeat (unix seconds).
WORKERS_KEY = REDIS_PREFIX + "workers"
# How often a worker beats into WORKERS_KEY (seconds).
PRESENCE_INTERVAL = 5.0
# Set once per Redis lifetime; its absence tells the recovery sweep that Redis lost its data.
BROKER_EPOCH_KEY = REDIS_PREFIX + "broker-epoch"
# Stream of task events (XADD, capped): what GET /api/events serves and replays from.
EVENTS_STREAM = REDIS_PREFIX + "events"

# Conversation reads page (both sides need the numbers: the API validates ``limit``, the
# read task defaults it for a message that names none). Pages are also cut short by size,
# so a page is never larger than MAX_RESULT_BYTES however long its messages are. The
# default is the largest page: a client written before paging (it reads ``messages`` and
# knows nothing of ``has_more``) still gets a whole history of ordinary length.
CONVERSATION_PAGE_MAX = 1000
CONVERSATION_PAGE_DEFAULT = CONVERSATION_PAGE_MAX
