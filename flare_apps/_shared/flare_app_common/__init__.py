"""Code shared by every catalog app; copied into each job's custom/ folder by the job builder.

Runs inside NVFlare server/client processes. Only numpy at import time; dp-accounting and
nvflare are imported where used.
"""
