"""Crash recovery: replay the journal's unfinished transaction and bring the state folder to a consistent point.

After ``kill -9`` or a power cut at any point of an update, :func:`recover` reads the one transaction
the journal (:mod:`.journal`) left open and finishes or undoes it, step by step:

* a rollback that began is finished (``current`` put back when the commit had happened; the release
  marked bad);
* a commit whose ``current`` link had switched is finished (``previous`` set); one whose link had
  not switched is rolled back;
* an install, prebuilt-engine download or health check without a commit is rolled back (the
  uncommitted store entry removed); a release whose health check was interrupted
  ``max_health_crashes`` times is marked bad — a crash there may be the model's fault;
* anything else is abandoned.

Then staging and the store are swept: a partial download of the last transaction that downloaded
something is kept so it resumes (it is verified in full before any use), everything else not
pointed to by ``current`` or ``previous`` goes. Every action is idempotent, so a crash during
recovery is recovered by the next one.
"""

from __future__ import annotations

from fusionedge.sdk.fleet.journal import Journal, Transaction
from fusionedge.sdk.fleet.store import Store

__all__ = ["recover", "resumable_parts"]


def recover(journal: Journal, store: Store, *, model: str, max_health_crashes: int) -> list[str]:
    """Finish or undo the open transaction, then sweep staging and the store (the caller holds the lock).

    Args:
        journal: the agent's journal.
        store: the agent's state folder.
        model: the model this agent runs (names a bad release whose record is unreadable).
        max_health_crashes: crashes in one release's health check after which it is marked bad.

    Returns:
        What was done, one line per action (empty when the state was already consistent).
    """
    actions: list[str] = []
    txn = journal.open_transaction()
    if txn is not None:
        actions += _recover_transaction(journal, store, txn, model=model,
                                        max_health_crashes=max_health_crashes)
    actions += store.clean_staging(resumable_parts(journal))
    actions += store.clean_store()
    return actions


def resumable_parts(journal: Journal) -> set[str]:
    """The ``.part`` files of the last transaction that downloaded something (kept so they resume).

    That is the archive's part when it was not verified yet, and the prebuilt engine's part when
    that transaction began an engine download (a verified plan was moved away, so at most a
    partial one is left). Keeping them is safe: a partial file is only ever used after the whole
    file passed ``verify_length_and_hashes``; a file that failed verification was deleted at once.
    """
    for txn in reversed(journal.transactions()):
        begin = txn.began("download")
        if begin is None:
            continue
        keep = set() if txn.ended("verify") else {f"{begin['sha256']}.part"}
        engine = txn.began("engine")
        if engine is not None and engine.get("engine_sha256"):
            keep.add(f"{engine['engine_sha256']}.part")
        return keep
    return set()


def _mark_bad_from_record(store: Store, sha: str, release_no: int, model: str, reason: str) -> None:
    rel = store.read_release(sha)
    store.mark_bad(rel.model if rel else model, rel.version if rel else "?",
                   rel.release if rel else release_no, sha, reason)


def _recover_transaction(journal: Journal, store: Store, txn: Transaction, *, model: str,
                         max_health_crashes: int) -> list[str]:
    actions: list[str] = []
    step = txn.interrupted_step
    if txn.began("engine") is not None and not txn.ended("engine"):
        step = "engine"  # after the install (which ended), so rolled back below like an install
    sha = txn.value("sha256") or txn.value("to_sha")
    journal.begin(txn.txn, "recover", interrupted=step, sha256=sha)
    outcome = "interrupted"
    commit = txn.began("commit")
    rollback = txn.began("rollback")
    if rollback is not None and not txn.ended("rollback"):
        from_sha = rollback.get("from_sha")
        if from_sha is not None:  # the commit had happened: put the old model back
            store.point("current", from_sha or None)
        rel = store.read_release(rollback["sha256"])
        store.mark_bad(rel.model if rel else model, rel.version if rel else "?",
                       int(rollback.get("release", 0)), rollback["sha256"], "rollback interrupted by a crash")
        journal.end(txn.txn, "rollback", recovered=True)
        outcome = "rolled-back"
        actions.append(f"finished the rollback of {rollback['sha256'][:12]}")
    elif commit is not None and not txn.ended("commit"):
        to_sha, from_sha = commit["to_sha"], commit.get("from_sha")
        if store.link_sha("current") == to_sha:
            if from_sha:
                store.point("previous", from_sha)
            journal.end(txn.txn, "commit", recovered=True)
            outcome = "updated"
            actions.append(f"finished the commit of {to_sha[:12]} (current had switched)")
        else:
            outcome = "rolled-back"
            actions.append(f"rolled back the uncommitted install of {to_sha[:12]}")
    elif step in ("install", "health") or (txn.ended("install") and not txn.began("commit")):
        if step == "health" and sha:
            crashes = _health_crashes(journal, sha)
            if crashes >= max_health_crashes:
                _mark_bad_from_record(store, sha, int(txn.value("release") or 0), model,
                                      f"the health check was interrupted by a crash {crashes} times")
                actions.append(f"marked {sha[:12]} bad after {crashes} crashes in its health check")
        outcome = "rolled-back"
        actions.append(f"rolled back the uncommitted install of {str(sha)[:12]} (interrupted at {step})")
    elif txn.ended("commit"):
        outcome = "updated"  # the crash came after the commit: nothing to undo
    elif step is not None:
        actions.append(f"abandoned the interrupted {step} step")
    journal.end(txn.txn, "recover", interrupted=step, sha256=sha, actions=actions)
    journal.end(txn.txn, "check", outcome=outcome, recovered=True)
    return actions


def _health_crashes(journal: Journal, sha: str) -> int:
    return sum(1 for r in journal.records()
               if r["step"] == "recover" and r["phase"] == "begin" and r.get("interrupted") == "health"
               and r.get("sha256") == sha)  # including the recovery being recorded now
