"""The steps of scripts/test_celery_task_status.py, one module per group of the report.

The script stays the entry point (operators and tests run it by path); this package is what
it imports, so that each group can be read and changed without the other six in view.
"""
