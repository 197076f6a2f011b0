"""The receiver's own alerts: rules over the store, evaluated by the web processes themselves
(not by a handler, so they fire when handlers are what broke).

Every ``[alerts] every`` each web process adds its refused-delivery counts to the store; one of
them (a turn, as for reconcile and pruning) then evaluates every enabled rule. A rule returns
the :class:`Finding` s that hold now, each keyed by rule and subject (a handler, a folder).
:func:`decide` compares them with the open alerts: a new one fires, an open one is sent again
at most once per ``cooldown`` while it holds, and one that no longer holds resolves. Each change
and the message it owes commit together (:meth:`receiver.storage.watch.Watch.settle`), so a
restart neither loses nor repeats what was decided; the messages are then sent to every target
(apprise URLs) until each took it. With no target, alerts are still kept, listed by
``GET /alerts`` and shown by the console.

The database being unreachable cannot be kept in it: the process that last evaluated tells the
targets itself after ``[alerts.storage] unreachable_after``, and keeps the alert in the store
once the database is back. Texts say what happened and what to do; they name no secret, and
what a callback brought (a delivery id, an error) is cut short and stripped of control
characters.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote

import apprise
import structlog

from receiver.clock import Clock
from receiver.config import AlertsTable, RuleTable
from receiver.errors import SettingsError, StoreError
from receiver.failures import ADVICE, FailureCategory
from receiver.models import Alert, AlertChange, AlertMessage
from receiver.notifying import NotSent, Target, UnusableTarget, send, services, targets_of
from receiver.storage.admin import Admin
from receiver.storage.watch import Watch
from receiver.tallies import Tally

log = structlog.get_logger("receiver.alerts")

RULES = ("signatures_failing", "callbacks_stopped", "tasks_failing", "jobs_dead",
         "deliveries_quarantined", "downloads_at_risk", "storage")
TITLES = {
    "signatures_failing": "webhook signatures failing",
    "callbacks_stopped": "callbacks may have stopped",
    "tasks_failing": "tasks failing",
    "jobs_dead": "jobs dead",
    "deliveries_quarantined": "deliveries quarantined",
    "downloads_at_risk": "downloads at risk",
    "storage": "storage",
}
TURN, HOLD_ROUNDS = "alerts", 4  # the turn among processes, held this many periods
GIVE_UP_S = 86400.0  # a message no target took for this long is given up (and logged)
_SHOWN = 200  # characters of a value that came from a callback or a handler
_CATEGORIES = {c.value: c for c in FailureCategory}
# what chat services would read as markup: quotation marks, a broken bar, a zero-width space
_INERT = str.maketrans({"<": "\u2039", ">": "\u203a", "@": "@\u200b", "`": "'",
                        "|": "\u00a6"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]+")


@dataclass(frozen=True, kw_only=True)
class Finding:
    """A rule's condition that holds now: ``text`` says what, ``advice`` what to do, ``link``
    where the console shows it (a path under the receiver)."""

    rule: str
    subject: str = ""
    text: str
    advice: str
    link: str | None = None


@dataclass(frozen=True, kw_only=True)
class Scope:
    """What the rules read besides the store: the clock's now, this process's folders, and
    the handlers that keep a task's files (for the downloads-at-risk rule)."""

    watch: Watch
    table: AlertsTable
    now: float
    db_path: Path | None = None
    media_dir: Path | None = None
    keepers: frozenset[str] = frozenset()


Rule = Callable[[Scope], Awaitable[list[Finding]]]


def shown(value: object) -> str:
    """A value from outside (a callback, a handler's error) as alert text: one line, short,
    and inert where chat services read markup: a URL defanged (``http[:]//``, never a link to
    click in an operator's channel), angle brackets (Slack's ``<url|text>``) and mentions
    (``@everyone``) made plain."""
    text = _CONTROL.sub(" ", str(value)).strip()
    if len(text) > _SHOWN:
        text = text[: _SHOWN - 1] + "…"
    return text.translate(_INERT).replace("://", "[:]//")


def span(seconds: float) -> str:
    """``300`` → ``5m``; ``5400`` → ``1h30m``; ``172800`` → ``2d``."""
    total = max(0, round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m"), (secs, "s"))
             if n]
    return "".join(parts[:2]) or "0s"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


# ---- the rules -------------------------------------------------------------------------------


async def signatures_failing(scope: Scope) -> list[Finding]:
    rule = scope.table.signatures_failing
    counts = await scope.watch.tally("refused", since=scope.now - rule.window)
    total = sum(counts.values())
    if total < rule.threshold:
        return []
    by_reason = ", ".join(f"{n} {_refusal(label)}" for label, n in
                          sorted(counts.items(), key=lambda i: (-i[1], i[0])))
    reasons = {label.partition(":")[2] for label in counts}
    advice = [text for words, text in _REFUSAL_ADVICE if reasons & words]
    return [Finding(
        rule="signatures_failing",
        text=f"{plural(total, 'delivery', 'deliveries')} refused in the last "
             f"{span(rule.window)}: {by_reason}.",
        advice=" ".join(advice) or _REFUSAL_ADVICE[0][1],
    )]


def _refusal(label: str) -> str:
    """``musicapi:signature_mismatch`` → ``signature_mismatch with the musicapi scheme``."""
    scheme, _, reason = label.partition(":")
    return f"{reason} with {'no signature scheme' if scheme == 'none' else f'the {scheme} scheme'}"


_REFUSAL_ADVICE: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset({"signature_mismatch"}),
     "A signature that does not match: the webhook secret differs between the tasks and this "
     "receiver (rotated on one side only?). Compare SONIC_WEBHOOK_SECRET with the "
     "webhook_secret the tasks are created with; during a rotation give both, comma "
     "separated."),
    (frozenset({"timestamp_expired", "timestamp_in_future"}),
     "A timestamp out of tolerance: a clock is off (check NTP on both sides), or old "
     "deliveries are being replayed."),
    (frozenset({"missing_signature", "malformed_signature", "missing_timestamp",
                "malformed_timestamp"}),
     "No usable signature: the sender does not sign with a scheme enabled here "
     "(RECEIVER_SCHEMES), or something in between strips the headers."),
)


async def callbacks_stopped(scope: Scope) -> list[Finding]:
    rule = scope.table.callbacks_stopped
    polled, tasks = await scope.watch.polled_since(scope.now - rule.window)
    overdue = await scope.watch.overdue_open()
    oldest_open, last_webhook = await scope.watch.quiet()
    reasons: list[str] = []
    if polled >= rule.threshold:
        reasons.append(f"polling found {plural(polled, 'transition')} of "
                       f"{plural(tasks, 'task')} that no callback brought in the last "
                       f"{span(rule.window)}")
    if overdue:
        reasons.append(f"{plural(overdue, 'task is', 'tasks are')} past the deadline and "
                       "still not finished")
    quiet_since = scope.now - rule.quiet
    if oldest_open is not None and oldest_open < quiet_since and (
            last_webhook is None or last_webhook < quiet_since):
        heard = ("no callback has ever come" if last_webhook is None else
                 f"no callback for {span(scope.now - last_webhook)}")
        reasons.append(f"{heard} while tasks are open (the oldest seen "
                       f"{span(scope.now - oldest_open)} ago)")
    if not reasons:
        return []
    return [Finding(
        rule="callbacks_stopped", text=_sentence("; ".join(reasons)),
        advice="Check that the Sonic service can reach RECEIVER_PUBLIC_URL/webhooks/sonic "
               "(DNS, TLS, a proxy or firewall, a changed URL) and that tasks are created with "
               "this webhook_url. Meanwhile `sonic-receiver replay reconcile` (or [reconcile] "
               "every_s) records what the callbacks did not bring.",
        link="/ui/tasks?state=running",
    )]


async def tasks_failing(scope: Scope) -> list[Finding]:
    rule = scope.table.tasks_failing
    ended = await scope.watch.ended_since(scope.now - rule.window)
    failed = sum(ended.failed.values())
    total = failed + ended.succeeded
    if total < rule.min_tasks or failed / total <= rule.share:
        return []
    by_category = sorted(ended.failed.items(), key=lambda item: (-item[1], item[0]))
    top = _CATEGORIES.get(by_category[0][0], FailureCategory.UNKNOWN)
    return [Finding(
        rule="tasks_failing",
        text=f"{failed} of {plural(total, 'task')} that ended in the last {span(rule.window)} "
             f"failed ({failed / total:.0%}, above {rule.share:.0%}): "
             + ", ".join(f"{category} {n}" for category, n in by_category) + ".",
        advice=f"Mostly {top.value}: {ADVICE[top]}.",
        link="/ui/tasks?state=failed",
    )]


async def jobs_dead(scope: Scope) -> list[Finding]:
    rule = scope.table.jobs_dead
    findings = []
    for dead in await scope.watch.dead_since(scope.now - rule.window):
        job = await scope.watch.job_brief(dead.last_id)
        last = (f" The last: job {dead.last_id} of task {shown(job.task_id)}: "
                f"{shown(job.error or 'no error recorded')}." if job else "")
        findings.append(Finding(
            rule="jobs_dead", subject=dead.handler,
            text=f"{plural(dead.count, 'job')} of {dead.handler} gave up in the last "
                 f"{span(rule.window)}.{last}",
            advice="See why in the console; once the cause is fixed, run them again with "
                   f"`sonic-receiver replay redispatch --handler {dead.handler}` or the "
                   "console's Retry.",
            link=f"/ui/jobs?state=dead&handler={quote(dead.handler)}",
        ))
    return findings


async def deliveries_quarantined(scope: Scope) -> list[Finding]:
    rule = scope.table.deliveries_quarantined
    count, delivery_id, reason = await scope.watch.quarantined_since(scope.now - rule.window)
    if not count:
        return []
    last = (f" The last: {shown(delivery_id)}: {shown(reason or 'no reason')}."
            if delivery_id else "")
    return [Finding(
        rule="deliveries_quarantined",
        text=f"{plural(count, 'delivery', 'deliveries')} quarantined in the last "
             f"{span(rule.window)} (signed, but not usable).{last}",
        advice="Each is kept raw with its reason: see it in the console. Once the cause is "
               "fixed (a parser, a task that was unknown), record it again with "
               "`sonic-receiver replay redispatch --quarantined` or the console's Record again.",
        # by query: any id works there (a path cannot hold "." or "..")
        link=(f"/ui/delivery?id={quote(delivery_id, safe='')}" if delivery_id
              else "/ui/deliveries?outcome=quarantined"),
    )]


async def downloads_at_risk(scope: Scope) -> list[Finding]:
    rule = scope.table.downloads_at_risk
    if not scope.keepers:
        return []
    lifetimes = {platform: float(s) for platform, s in rule.kept_for_by_platform.items()}
    longest = max([float(rule.kept_for), *lifetimes.values()])
    shortest = min([float(rule.kept_for), *lifetimes.values()])
    pending = await scope.watch.downloads_pending(
        sorted(scope.keepers), before=scope.now - shortest * rule.at_risk,
        after=scope.now - longest)
    risky = []
    for job in pending:
        lifetime = lifetimes.get(job.platform or "", float(rule.kept_for))
        age = scope.now - job.created_at
        if lifetime * rule.at_risk <= age < lifetime:
            risky.append((lifetime - age, job))
    if not risky:
        return []
    risky.sort(key=lambda item: item[0])
    soonest, first = risky[0]
    named = ", ".join(f"{shown(job.task_id)} ({job.handler}, {job.state})"
                      for _, job in risky[:5])
    more = f" and {len(risky) - 5} more" if len(risky) > 5 else ""
    return [Finding(
        rule="downloads_at_risk",
        text=f"{plural(len(risky), 'task')} succeeded but {'its' if len(risky) == 1 else 'their'}"
             f" files are not kept yet, and the provider drops them soon (the first in "
             f"{span(soonest)}): {named}{more}.",
        advice="See why the download jobs have not finished (console, Jobs). A dead one can "
               "still be run again before the files go: `sonic-receiver replay redispatch "
               f"--handler {first.handler}`.",
        link=f"/ui/task?id={quote(first.task_id, safe='')}",
    )]


async def storage(scope: Scope) -> list[Finding]:
    rule = scope.table.storage
    findings = []
    folders = {"database": scope.db_path.parent if scope.db_path else None,
               "media": scope.media_dir}
    for what, folder in folders.items():
        if folder is None:
            continue
        free = _free_bytes(folder)
        if free is not None and free < rule.min_free_mb * 2**20:
            findings.append(Finding(
                rule="storage", subject=f"{what}_space",
                text=f"Only {free / 2**20:.0f} MiB free under the {what} folder {folder} "
                     f"(below {rule.min_free_mb} MiB).",
                advice="Free space or grow the volume: when the disk is full, deliveries are "
                       "answered 503 and the sender must retry. Old raw bodies and finished "
                       "jobs go with [retention] older_than.",
            ))
    if scope.db_path is not None:
        wal = _size(Path(f"{scope.db_path}-wal"))
        if wal is not None and wal > rule.max_wal_mb * 2**20:
            findings.append(Finding(
                rule="storage", subject="wal",
                text=f"The SQLite write-ahead log is {wal / 2**20:.0f} MiB (above "
                     f"{rule.max_wal_mb} MiB): a long read keeps it from being checkpointed.",
                advice="Look for a process holding a read open on the database (a backup, a "
                       "shell); the log shrinks at the next checkpoint once it ends.",
            ))
    return findings


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


RULE_CHECKS: Mapping[str, Rule] = {
    "signatures_failing": signatures_failing,
    "callbacks_stopped": callbacks_stopped,
    "tasks_failing": tasks_failing,
    "jobs_dead": jobs_dead,
    "deliveries_quarantined": deliveries_quarantined,
    "downloads_at_risk": downloads_at_risk,
    "storage": storage,
}


def rule_table(table: AlertsTable, rule: str) -> RuleTable:
    found: RuleTable = getattr(table, rule)
    return found


# ---- deciding ----------------------------------------------------------------------------------


def decide(
    opened: Sequence[Alert], findings: Iterable[Finding], *, evaluated: Iterable[str],
    silenced: Iterable[str] = (), now: float, cooldowns: Mapping[str, float],
    base_url: str | None = None,
) -> list[AlertChange]:
    """What a round changes: each finding fires (new), repeats (cooldown passed) or is seen
    (still within it); each open alert of an ``evaluated`` rule that no finding matches
    resolves. An open alert of a ``silenced`` rule (disabled since) resolves without a
    message; one of a rule that could not be evaluated is left as it is."""
    by_key = {(a.rule, a.subject): a for a in opened}
    changes: list[AlertChange] = []
    held: set[tuple[str, str]] = set()
    for found in findings:
        key = (found.rule, found.subject)
        if key in held:
            continue
        held.add(key)
        alert = by_key.get(key)
        change = AlertChange(kind="seen", rule=found.rule, subject=found.subject,
                             text=found.text, advice=found.advice, link=found.link,
                             alert_id=alert.id if alert else None)
        body = _body(found.text, found.advice, found.link, base_url)
        if alert is None:
            change = replace(change, kind="fire", title=f"[sonic-receiver] {_title(found)}",
                             body=body)
        elif now - alert.notified_at >= cooldowns[found.rule]:
            change = replace(change, kind="repeat",
                             title=f"[sonic-receiver] still: {_title(found)}",
                             body=f"Firing since {span(now - alert.fired_at)} ago.\n\n{body}")
        changes.append(change)
    evaluated, silenced = set(evaluated), set(silenced)
    for alert in opened:
        if (alert.rule, alert.subject) in held:
            continue
        change = AlertChange(kind="resolve", rule=alert.rule, subject=alert.subject,
                             text=alert.text, advice=alert.advice, link=alert.link,
                             alert_id=alert.id)
        if alert.rule in silenced:
            changes.append(change)  # no message: the operator turned the rule off
        elif alert.rule in evaluated:
            name = TITLES.get(alert.rule, alert.rule) + (
                f" ({alert.subject})" if alert.subject else "")
            changes.append(replace(
                change, title=f"[sonic-receiver] resolved: {name}",
                body=f"Cleared after {span(now - alert.fired_at)}. It was: {alert.text}"))
    return changes


def _title(found: Finding) -> str:
    name = TITLES.get(found.rule, found.rule)
    return f"{name} ({found.subject})" if found.subject else name


def _body(text: str, advice: str, link: str | None, base_url: str | None) -> str:
    body = f"{text}\n\nWhat to do: {advice}"
    if link:
        body += f"\n\nIn the console: {(base_url or '') + link}"
    return body


# ---- the round -------------------------------------------------------------------------------


def check_targets(urls: Sequence[str]) -> None:
    """Raise :class:`receiver.errors.SettingsError` for the first alert target apprise cannot
    use (at start-up, so that a typo is not found when an alert is due)."""
    try:
        services(targets_of(urls))
    except UnusableTarget as exc:
        raise SettingsError(f"RECEIVER_ALERT_TARGETS / [alerts] targets: {exc.message}") from None



@dataclass
class Unreachable:
    """The database away, as the evaluating process saw it (kept in memory only)."""

    since: float
    told_at: float | None = None
    error: str = ""


@dataclass
class Alerting:
    """The alerts of one web process: its refusal counts, and, on its turns, the rules, the
    decisions and the sending. :meth:`run` loops until cancelled; :meth:`round` is one pass."""

    table: AlertsTable
    targets: Sequence[str]
    watch: Watch
    admin: Admin
    clock: Clock
    owner: str
    refusals: Tally = field(default_factory=Tally)
    db_path: Path | None = None
    media_dir: Path | None = None
    keepers: frozenset[str] = frozenset()
    base_url: str | None = None
    _evaluator: bool = True  # whether this process evaluated last (it tells of an outage)
    _unreachable: Unreachable | None = None
    _services: dict[int, apprise.Apprise] | None = None

    async def run(self) -> None:
        # The period is wall time, whatever the clock: a test's fake clock (whose sleep moves
        # it) must not be spun by a loop that runs in every app.
        try:
            while True:
                await asyncio.sleep(self.table.every)
                await self.round()
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Give the turn back, if this process holds it, so that another one evaluates the
        next round rather than after the hold runs out."""
        if not self._evaluator:
            return
        try:
            await self.admin.release_turn(TURN, owner=self.owner)
        except StoreError as exc:
            log.warning("alerts_turn_not_released", error=exc.message)

    async def round(self) -> list[AlertChange]:
        """Add this process's counts; on this process's turn, evaluate, decide and send.
        Never raises but for cancellation: a failure is logged, and the database being away
        is an alert of its own."""
        now = self.clock.now()
        try:
            counts = self.refusals.take()
            try:
                await self.watch.add_tallies(counts)
            except BaseException:
                self.refusals.give_back(counts, now=now)
                raise
            # held for several rounds: a round that sends to a slow target may outlast one
            # period, and another process must not send the same messages meanwhile
            evaluator = await self.admin.take_turn(
                TURN, owner=self.owner, hold_s=max(self.table.every * HOLD_ROUNDS, 30.0))
            await self._back(now)  # the database answered
            self._evaluator = evaluator
            if not evaluator:
                return []
            changes = await self.evaluate(now)
            await self.send_due(now)
            await self.watch.prune_tallies(before=now - _longest_window(self.table) - 60)
            return changes
        except StoreError as exc:
            await self._away(now, exc)
        except Exception:
            log.exception("alerts_round_failed")
        return []

    async def evaluate(self, now: float) -> list[AlertChange]:
        """Every enabled rule, then the changes they make, written with their messages."""
        scope = Scope(watch=self.watch, table=self.table, now=now, db_path=self.db_path,
                      media_dir=self.media_dir, keepers=self.keepers)
        findings: list[Finding] = []
        evaluated: list[str] = []
        silenced: list[str] = []
        for name, check in RULE_CHECKS.items():
            if not (self.table.enabled and rule_table(self.table, name).enabled):
                silenced.append(name)
                continue
            try:
                findings += await check(scope)
            except StoreError:
                raise
            except Exception:  # one rule's bug must not stop the others
                log.exception("alert_rule_failed", rule=name)
                continue
            evaluated.append(name)
        cooldowns = {name: float(rule_table(self.table, name).cooldown) for name in RULES}
        changes = await self.watch.settle(
            lambda opened: decide(opened, findings, evaluated=evaluated, silenced=silenced,
                                  now=now, cooldowns=cooldowns, base_url=self.base_url),
            now=now)
        for change in changes:
            if change.kind != "seen":
                log.warning("alert_" + {"fire": "fired", "repeat": "repeated",
                                        "resolve": "resolved"}[change.kind],
                            rule=change.rule, subject=change.subject, text=change.text)
        return changes

    async def send_due(self, now: float) -> None:
        """Send every message not yet taken by every target; a message is done once all
        took it, or given up after :data:`GIVE_UP_S`."""
        for message in await self.watch.due_messages():
            await self._send(message, now)

    async def _send(self, message: AlertMessage, now: float) -> None:
        targets = targets_of(self.targets)
        sent = set(message.sent_to)
        pending = [t for t in targets if t.fingerprint not in sent]
        errors: list[str] = []
        if pending:
            found = await self._services_for(targets)
            kind = (apprise.NotifyType.SUCCESS if message.kind == "resolved"
                    else apprise.NotifyType.FAILURE)
            results = await asyncio.gather(*(
                _deliver(t, found, title=message.title, body=message.body, kind=kind)
                for t in pending))
            for target, error in zip(pending, results, strict=True):
                if error is None:
                    sent.add(target.fingerprint)
                else:
                    errors.append(f"{target.label}: {error}")
        done = not errors or now - message.created_at >= GIVE_UP_S
        if errors and done:
            log.error("alert_message_given_up", message=message.id, errors=errors)
        elif errors and message.attempts == 0:
            log.warning("alert_message_not_sent", message=message.id, errors=errors)
        elif pending:
            log.info("alert_message_sent", message=message.id, kind=message.kind,
                     targets=len(pending))
        await self.watch.message_tried(message.id, sent_to=sorted(sent),
                                       error="; ".join(errors) or None,
                                       done_at=now if done else None)

    async def _services_for(self, targets: Sequence[Target]) -> dict[int, apprise.Apprise]:
        if self._services is None:
            try:
                self._services = await asyncio.to_thread(services, targets)
            except UnusableTarget as exc:  # checked at start-up; kept here for safety
                log.error("alert_targets_unusable", error=exc.message)
                self._services = {}
        return self._services

    async def _away(self, now: float, exc: StoreError) -> None:
        """The database could not be reached this round: after ``unreachable_after``, the
        process that evaluated last tells the targets itself, once per cooldown."""
        rule = self.table.storage
        if self._unreachable is None:
            self._unreachable = Unreachable(since=now)
        away = self._unreachable
        away.error = exc.message
        log.warning("alerts_round_store_unavailable", error=exc.message)
        if not (self.table.enabled and rule.enabled and self._evaluator):
            return
        if now - away.since < rule.unreachable_after:
            return
        if away.told_at is not None and now - away.told_at < rule.cooldown:
            return
        away.told_at = now
        await self._tell("[sonic-receiver] storage (database unreachable)",
                         f"The database has been unreachable for {span(now - away.since)} "
                         f"from {self.owner}: {shown(exc.message)}.\n\nWhat to do: "
                         f"{UNREACHABLE_ADVICE}", apprise.NotifyType.FAILURE)

    async def _back(self, now: float) -> None:
        """The database answers again: a resolved message if an outage was told, and the
        outage kept as an alert of the past."""
        away, self._unreachable = self._unreachable, None
        if away is None or away.told_at is None:
            return
        text = (f"The database was unreachable for {span(now - away.since)} from "
                f"{self.owner}: {shown(away.error)}.")
        await self._tell("[sonic-receiver] resolved: storage (database unreachable)",
                         f"Cleared after {span(now - away.since)}. It was: {text}",
                         apprise.NotifyType.SUCCESS)
        await self.watch.keep_past_alert(rule="storage", subject="database", text=text,
                                         advice=UNREACHABLE_ADVICE, fired_at=away.since,
                                         resolved_at=now)

    async def _tell(self, title: str, body: str, kind: apprise.NotifyType) -> None:
        """Send straight to every target (the outbox is in the database that is away)."""
        targets = targets_of(self.targets)
        if not targets:
            return
        found = await self._services_for(targets)
        results = await asyncio.gather(*(_deliver(t, found, title=title, body=body, kind=kind)
                                         for t in targets))
        errors = [f"{t.label}: {e}" for t, e in zip(targets, results, strict=True) if e]
        if errors:
            log.error("alert_message_not_sent", title=title, errors=errors)


UNREACHABLE_ADVICE = (
    "Deliveries are answered 503 meanwhile (the sender retries them) and every process "
    "reconnects by itself: check the database server (RECEIVER_DB), its disk and the network "
    "to it.")


async def _deliver(target: Target, found: Mapping[int, apprise.Apprise], *, title: str,
                   body: str, kind: apprise.NotifyType) -> str | None:
    service = found.get(target.index)
    if service is None:
        return "not a usable apprise URL"
    try:
        await send(service, title=title, body=body, notify_type=kind)
    except NotSent as exc:
        return exc.message
    return None


def _longest_window(table: AlertsTable) -> float:
    return max(float(rule_table(table, name).window) for name in RULES)

