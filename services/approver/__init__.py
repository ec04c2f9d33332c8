"""The approver: keeps approval requests, enforces who may decide, counts approvals, expires them."""
