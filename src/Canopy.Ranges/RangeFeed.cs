// The change feed of one range replica (a "rangefeed")
// ===================================================
//
// What it guarantees. A reader that registers at timestamp F on a span S of this range receives every committed
// version in S with a timestamp above F, each at least once (duplicates are possible and carry the same key and
// timestamp: readers dedupe by key and timestamp), together with resolved timestamps R: once R is reported, no
// committed version at or below R that the reader has not been given will ever appear in S. Events are not in
// timestamp order; the reader orders them (a version is final once R passes it).
//
// Where R comes from. R = min(bound, oldest unresolved intent in S − ε), where the bound is given by the server's
// evaluation layer at the leaseholder: its closed timestamp (no new write is evaluated at or below it: the timestamp
// cache's low-water mark is raised to it) lowered below any write evaluated but not yet applied. An intent becomes a
// committed version only at or above its own timestamp, so while one is unresolved R stays below it. The feed serves
// only at the leaseholder (the server checks the lease); a new leaseholder's closed timestamp starts at its lease start,
// which is above every timestamp the previous holder closed, so R never goes backwards across a lease move.
//
// States. Inactive (no reader for a while): the state machine still collects the raw engine ops of each applied batch
// (a list of references, cleared when the batch is written) but decodes nothing. Active: each written batch is decoded
// into (1) committed versions, appended to a bounded in-memory buffer with increasing sequence numbers, and (2) intent
// puts/removals, kept in a map user key → (transaction, timestamp). Activation scans the engine for the intents of the
// span (one seek per user key), under the same lock that applies written batches, after the ops of every batch that was
// written before are in the engine: an intent written just before the scan is seen by the scan and again by the flush
// (idempotent), one applied but not yet written is seen by the flush only.
//
// Reading. A new reader gets a position p (the buffer's sequence number now) and a catch-up scan of the engine for
// versions above F in S, in pages; every version with sequence ≤ p is in the engine when p is taken (batches are
// flushed after they are written), so the scan plus the buffer after p miss nothing. Then it reads the buffer after its
// position. Positions carry the buffer's incarnation: after a snapshot install, a deactivation or a buffer overflow
// past a reader's position, the reader is told to restart (register again from its last resolved timestamp).
//
// Failure cases. Snapshot install: the feed resets (readers restart). Leaseholder crash or lease move: readers get
// NotLeaseholder / RangeNotFound from the server and register at the new leaseholder from their last resolved
// timestamp. Buffer overflow (a reader far behind): restart. A reader that stops polling costs nothing after it.
namespace Canopy.Ranges;

using System.Globalization;
using Canopy.Clock;
using Canopy.Mvcc;
using Canopy.Storage;

/// <summary>One committed version seen by a feed: the user key, its timestamp and its value (null: a deletion).</summary>
public readonly record struct FeedEvent(long Seq, byte[] Key, HlcTimestamp Timestamp, byte[]? Value);

/// <summary>Why a read of a feed could not be served from the reader's position.</summary>
public enum FeedReadStatus
{
    Ok,

    /// <summary>The position is unknown here (another incarnation, or the buffer moved past it): register again.</summary>
    Restart,
}

/// <summary>The answer to one read of a feed.</summary>
public sealed record FeedRead(FeedReadStatus Status, IReadOnlyList<FeedEvent> Events, string? Cursor, HlcTimestamp? Resolved, bool CatchingUp);

/// <summary>The change feed of one range replica (see the file header).</summary>
public sealed class RangeFeed
{
    /// <summary>
    /// Versions kept in memory for readers: at 4,000 writes/s (200 entities × 20 Hz), 40 s of history; a reader further
    /// behind restarts with a catch-up scan of the engine.
    /// </summary>
    public const int DefaultCapacity = 160_000;

    private readonly object _gate = new();
    private readonly List<EngineOp> _pending = []; // raft loop only: ops of applied batches not yet written
    private readonly Queue<FeedEvent> _buffer = new();
    private readonly Dictionary<byte[], (Guid Txn, HlcTimestamp Ts)> _intents = new(ByteArrayComparer.Instance);
    private readonly int _capacity;
    private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private bool _active;
    private long _incarnation;
    private long _nextSeq = 1;
    private long _lastUseTicks;

    public RangeFeed(int capacity = DefaultCapacity)
    {
        _capacity = capacity;
    }

    /// <summary>Whether a reader used the feed recently (the state machine then decodes written batches).</summary>
    public bool Active
    {
        get
        {
            lock (_gate)
            {
                return _active;
            }
        }
    }

    /// <summary>Completes when a batch with versions or intent changes is flushed (or the feed resets).</summary>
    public Task Changed
    {
        get
        {
            lock (_gate)
            {
                return _changed.Task;
            }
        }
    }

    // ---------------------------------------------------------------- fed by the state machine (raft loop)

    /// <summary>Called by Apply: an engine op of an applied command (put or delete).</summary>
    internal void Collect(EngineOp op) => _pending.Add(op);

    /// <summary>Called by Apply for a plain write command: a committed version.</summary>
    internal void CollectVersion(byte[] key, HlcTimestamp ts, byte[]? value) =>
        _pending.Add(new EngineOp(MvccKeys.VersionKey(key, ts), value is null ? [0x00] : [0x01, .. value]));

    /// <summary>Called once the applied batches are written to the engine.</summary>
    internal void Flush()
    {
        if (_pending.Count == 0)
        {
            return;
        }

        TaskCompletionSource? signal = null;
        lock (_gate)
        {
            if (_active)
            {
                var any = false;
                foreach (var op in _pending)
                {
                    any |= Decode(op);
                }

                if (any)
                {
                    signal = _changed;
                    _changed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                }
            }
        }

        _pending.Clear();
        signal?.TrySetResult();
    }

    /// <summary>Called when a snapshot replaced the replica's state: every reader restarts.</summary>
    internal void Reset()
    {
        _pending.Clear();
        Deactivate();
    }

    private bool Decode(EngineOp op)
    {
        if (op.Key.Length == 0 || op.Key[0] != MvccKeys.Prefix)
        {
            return false; // a transaction record or another non-data key
        }

        MvccKey k;
        try
        {
            k = MvccKeys.Decode(op.Key);
        }
        catch (FormatException)
        {
            return false;
        }

        if (k.Timestamp is { } ts)
        {
            if (op.Value is null)
            {
                return false; // a version removed (garbage collection): not a change
            }

            byte[]? value;
            try
            {
                value = MvccStore.DecodeVersion(op.Value);
            }
            catch (FormatException)
            {
                return false;
            }

            _buffer.Enqueue(new FeedEvent(_nextSeq++, k.UserKey, ts, value));
            while (_buffer.Count > _capacity)
            {
                _buffer.Dequeue();
            }

            return true;
        }

        if (op.Value is null)
        {
            return _intents.Remove(k.UserKey);
        }

        try
        {
            var intent = MvccIntent.Decode(op.Value);
            _intents[k.UserKey] = (intent.TxnId, intent.WriteTimestamp);
        }
        catch (FormatException)
        {
            // not an intent we can read: ignore (never happens with our own writes)
        }

        return true;
    }

    // ---------------------------------------------------------------- readers (the server, at the leaseholder)

    /// <summary>
    /// Starts decoding (if not yet): scans <paramref name="engine"/> for the intents of the span [start, end) and
    /// starts a new incarnation of the buffer. Idempotent while active.
    /// </summary>
    public void Activate(IStorageEngine engine, byte[] start, byte[]? end, DateTimeOffset now)
    {
        lock (_gate)
        {
            _lastUseTicks = now.UtcTicks;
            if (_active)
            {
                return;
            }

            _intents.Clear();
            _buffer.Clear();
            var (lo, hi) = MvccKeys.Span(start, end);
            while (true)
            {
                byte[]? next = null;
                foreach (var (key, value) in engine.Scan(lo, hi))
                {
                    var k = MvccKeys.Decode(key);
                    if (k.IsIntent)
                    {
                        var intent = MvccIntent.Decode(value);
                        _intents[k.UserKey] = (intent.TxnId, intent.WriteTimestamp);
                    }

                    next = MvccKeys.KeyEnd(k.UserKey); // seek past this user key's versions
                    break;
                }

                if (next is null)
                {
                    break;
                }

                lo = next;
            }

            _incarnation = Random.Shared.NextInt64(1, long.MaxValue);
            _active = true;
        }
    }

    /// <summary>Stops decoding if no reader used the feed since <paramref name="idleSince"/>.</summary>
    public void DeactivateIfIdle(DateTimeOffset idleSince)
    {
        lock (_gate)
        {
            if (_active && _lastUseTicks < idleSince.UtcTicks)
            {
                DeactivateLocked();
            }
        }
    }

    private void Deactivate()
    {
        lock (_gate)
        {
            DeactivateLocked();
        }
    }

    private void DeactivateLocked()
    {
        _active = false;
        _buffer.Clear();
        _intents.Clear();
        var signal = _changed;
        _changed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        signal.TrySetResult();
    }

    /// <summary>The oldest unresolved intent in [start, end), or null.</summary>
    public HlcTimestamp? OldestIntent(byte[] start, byte[]? end)
    {
        lock (_gate)
        {
            return OldestIntentLocked(start, end);
        }
    }

    /// <summary>The unresolved intents in [start, end) older than <paramref name="before"/> (for pushing their transactions).</summary>
    public IReadOnlyList<(byte[] Key, Guid Txn, HlcTimestamp Ts)> IntentsBefore(byte[] start, byte[]? end, HlcTimestamp before)
    {
        lock (_gate)
        {
            return _intents.Where(e => e.Value.Ts < before && InSpan(e.Key, start, end)).Select(e => (e.Key, e.Value.Txn, e.Value.Ts)).ToList();
        }
    }

    private HlcTimestamp? OldestIntentLocked(byte[] start, byte[]? end)
    {
        HlcTimestamp? oldest = null;
        foreach (var (key, (_, ts)) in _intents)
        {
            if (InSpan(key, start, end) && (oldest is null || ts < oldest.Value))
            {
                oldest = ts;
            }
        }

        return oldest;
    }

    /// <summary>
    /// One read of the span [start, end). <paramref name="cursor"/> null registers a reader from <paramref name="from"/>
    /// (exclusive): the answer is the first page of its catch-up scan. Otherwise the cursor of the previous answer.
    /// <paramref name="bound"/> is the evaluation layer's bound (closed timestamp, below writes in flight), computed
    /// before this call. At most <paramref name="limit"/> events per answer.
    /// </summary>
    public FeedRead Read(IStorageEngine engine, byte[] start, byte[]? end, HlcTimestamp from, string? cursor, HlcTimestamp bound, int limit, DateTimeOffset now)
    {
        long inc;
        long pos;
        byte[]? resumeKey;
        lock (_gate)
        {
            _lastUseTicks = now.UtcTicks;
            if (!_active)
            {
                return new FeedRead(FeedReadStatus.Restart, [], null, null, false);
            }

            if (cursor is null)
            {
                inc = _incarnation;
                pos = _nextSeq - 1;
                resumeKey = start;
            }
            else if (!TryParseCursor(cursor, out inc, out pos, out resumeKey) || inc != _incarnation ||
                     pos + 1 < (_buffer.Count > 0 ? _buffer.Peek().Seq : _nextSeq))
            {
                return new FeedRead(FeedReadStatus.Restart, [], null, null, false);
            }
        }

        if (resumeKey is not null)
        {
            return CatchUp(engine, start, end, from, inc, pos, resumeKey, limit);
        }

        lock (_gate)
        {
            // The resolved timestamp first, then the events: every version at or below it is already in the buffer.
            var resolved = bound;
            if (OldestIntentLocked(start, end) is { } oldest && oldest.Prev() < resolved)
            {
                resolved = oldest.Prev();
            }

            var events = new List<FeedEvent>();
            var last = pos;
            foreach (var e in _buffer)
            {
                if (e.Seq <= pos)
                {
                    continue;
                }

                if (events.Count >= limit)
                {
                    // Cut short: the resolved timestamp only holds for a complete read.
                    return new FeedRead(FeedReadStatus.Ok, events, Cursor(inc, last, null), null, false);
                }

                last = e.Seq;
                if (InSpan(e.Key, start, end))
                {
                    events.Add(e);
                }
            }

            last = Math.Max(last, _nextSeq - 1);
            return new FeedRead(FeedReadStatus.Ok, events, Cursor(inc, last, null), resolved, false);
        }
    }

    private static FeedRead CatchUp(IStorageEngine engine, byte[] start, byte[]? end, HlcTimestamp from, long inc, long pos, byte[] resumeKey, int limit)
    {
        var events = new List<FeedEvent>();
        var (lo, hi) = MvccKeys.Span(resumeKey, end);
        byte[]? nextKey = null;
        byte[]? lastKey = null;
        while (nextKey is null)
        {
            byte[]? seek = null;
            foreach (var (key, value) in engine.Scan(lo, hi))
            {
                var k = MvccKeys.Decode(key);
                if (k.Timestamp is not { } ts)
                {
                    continue; // an intent: not a committed change
                }

                if (ts > from)
                {
                    var sameKey = lastKey is not null && lastKey.AsSpan().SequenceEqual(k.UserKey);
                    if (events.Count >= limit && !sameKey)
                    {
                        nextKey = k.UserKey; // a page ends between user keys
                        break;
                    }

                    events.Add(new FeedEvent(0, k.UserKey, ts, MvccStore.DecodeVersion(value)));
                    lastKey = k.UserKey;
                    continue;
                }

                seek = MvccKeys.KeyEnd(k.UserKey); // versions are newest first: the rest of this key is older
                break;
            }

            if (nextKey is not null || seek is null)
            {
                break;
            }

            lo = seek;
        }

        _ = start;
        return new FeedRead(FeedReadStatus.Ok, events, Cursor(inc, pos, nextKey), null, nextKey is not null);
    }

    private static bool InSpan(byte[] key, byte[] start, byte[]? end) =>
        key.AsSpan().SequenceCompareTo(start) >= 0 && (end is null || key.AsSpan().SequenceCompareTo(end) < 0);

    private static string Cursor(long inc, long pos, byte[]? resumeKey) =>
        resumeKey is null
            ? $"{inc.ToString(CultureInfo.InvariantCulture)}:{pos.ToString(CultureInfo.InvariantCulture)}"
            : $"{inc.ToString(CultureInfo.InvariantCulture)}:{pos.ToString(CultureInfo.InvariantCulture)}:{Convert.ToHexString(resumeKey)}";

    private static bool TryParseCursor(string cursor, out long inc, out long pos, out byte[]? resumeKey)
    {
        resumeKey = null;
        pos = 0;
        var parts = cursor.Split(':');
        if (parts.Length is < 2 or > 3 || !long.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out inc) ||
            !long.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out pos))
        {
            inc = 0;
            return false;
        }

        if (parts.Length == 3)
        {
            try
            {
                resumeKey = Convert.FromHexString(parts[2]);
            }
            catch (FormatException)
            {
                return false;
            }
        }

        return true;
    }
}
