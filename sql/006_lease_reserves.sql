-- Budgets across processes: a lease holds the worst-case cost of the call its owner is about to pay
-- for, so the claim transaction can hold --max-total-cost against what gt.db records plus every live
-- process's calls in flight (leases.claim_unit), not only its own.
ALTER TABLE label_leases ADD COLUMN reserve_usd REAL NOT NULL DEFAULT 0;
