// The transaction coordinator: parallel commits (DESIGN §8)
// ========================================================
//
// A coordinator runs on the gateway server for each client transaction. It owns the transaction's meta (id, epoch,
// read and write timestamps, priority, anchor) and talks to the leaseholders of every range it touches.
//
// Guarantees:
// - Serializable: reads record their spans; a transaction whose write timestamp was pushed above its read timestamp
//   commits only after refreshing every span it read (kv_refresh finds no change in between); else it aborts
//   (retryable). Reads within the uncertainty window refresh to above the uncertain value first.
// - Read your writes: every value this transaction wrote is answered from here (never from a leaseholder, so a
//   vanished intent of an aborted zombie can never be read past: txn-pitfalls 7, 11).
// - The client hears "committed" only when the transaction is committed: explicitly (one-phase, two-phase end) or
//   implicitly: the STAGING record at timestamp T and every write it lists acknowledged as an intent at or below T
//   (txn-pitfalls 1). A write acknowledged above T makes the coordinator refresh and re-stage at the higher timestamp.
// - Outcomes are three (txn-pitfalls 5), decided in CommitAsync and nowhere else: Committed; Aborted (retryable unless
//   it says otherwise: nothing of the transaction is or will become visible); Ambiguous (the commit may or may not
//   have happened: a reply of the final batch was lost and status recovery could not settle it).
//
// Flow:
//   writes are buffered here (read-your-writes from the buffer) and flushed as pipelined intents when the buffer is
//   large or the transaction asks for pipelining; each flush starts the heartbeat (record PENDING, every second).
//   Commit:
//     read-only             → committed at the read timestamp, nothing sent.
//     one range, no intents → one-phase: values written directly (kv_txn_write onephase), no record, no intents.
//     parallel commits on   → in parallel: the anchor range's writes + STAGING record listing every write, the other
//                             ranges' writes as intents, and the earlier pipelined writes; all acknowledged at or
//                             below the staging timestamp → committed (one round of consensus). Then, in the
//                             background, the record becomes COMMITTED and intents are resolved.
//     parallel commits off  → two-phase: all intents first, then the record COMMITTED (two rounds).
//   Any unclear result (an error or lost reply in the final batch) is settled by status recovery run by the
//   coordinator itself (find or prevent each write, decide at the record): committed, aborted, or, if even that
//   cannot reach the ranges, ambiguous.
// Failure cases: the coordinator dies (gateway crash) → heartbeats stop; after TxnExpiry conflicting transactions
// abort a PENDING record or recover a STAGING one, and resolve the intents they meet. Fault points (FaultPoints)
// sit between every two steps so tests can kill a coordinator anywhere.
namespace Canopy.Txn;

using Canopy.Clock;
using Canopy.Rpc;
using Canopy.Storage;

/// <summary>How the coordinator reaches ranges (the server implements it with its router).</summary>
public interface ITxnSender
{
    /// <summary>Sends to the leaseholder of <paramref name="routeKey"/>'s range; final errors come back in the response. Throws when no leaseholder answered in time.</summary>
    Task<RpcResponse> SendAsync(RpcRequest request, byte[] routeKey, CancellationToken ct);

    /// <summary>The span [start, end) of the range holding <paramref name="key"/> (end null: to the end).</summary>
    Task<(byte[] Start, byte[]? End)> RangeOfAsync(byte[] key, CancellationToken ct);
}

/// <summary>
/// What the coordinator takes from its surroundings: time, background work, randomness, fault points. The defaults
/// are the real ones; the transaction simulation passes deterministic ones (virtual time, one thread, a seeded random).
/// </summary>
public sealed record TxnEnvironment
{
    public static readonly TxnEnvironment Default = new();

    public TimeProvider Time { get; init; } = TimeProvider.System;

    /// <summary>Starts background work (heartbeats, finalisation).</summary>
    public Func<Func<Task>, Task> Spawn { get; init; } = work => Task.Run(work);

    /// <summary>Ids and priorities (null: Random.Shared).</summary>
    public Random? Random { get; init; }

    /// <summary>Fault points of this coordinator (null: the process-wide <see cref="FaultPoints"/>).</summary>
    public Func<string, Task>? Faults { get; init; }

    /// <summary>Planted bugs (tests of the checkers only).</summary>
    public TxnBugs Bugs { get; init; }
}

/// <summary>
/// Planted bugs (txn-pitfalls.md): each breaks one rule on purpose so tests can show the transaction simulation or
/// the history checker catches it. Never set outside tests.
/// </summary>
[Flags]
public enum TxnBugs
{
    None = 0,

    /// <summary>Rule 9: commit at a pushed timestamp without refreshing reads.</summary>
    SkipRefresh = 1,

    /// <summary>Rule 1: tell "committed" when the stage succeeded, ignoring writes acknowledged above the staging timestamp.</summary>
    IgnorePushedWrites = 2,

    /// <summary>Rule 5: report an unclear final batch as aborted instead of settling it.</summary>
    UnclearIsAborted = 4,

    /// <summary>Rule 8 (replica side): writes ignore the timestamp cache.</summary>
    NoTimestampCache = 8,

    /// <summary>Rule 3 (replica side): status recovery does not prevent missing writes before deciding.</summary>
    RecoveryWithoutPrevent = 16,
}

/// <summary>Timing shared by coordinators and replicas.</summary>
public static class TxnTiming
{
    /// <summary>A record not heartbeaten for this long is abandoned (coordinators heartbeat every second).</summary>
    public static readonly TimeSpan Expiry = TimeSpan.FromSeconds(5);
}

/// <summary>Per-transaction switches.</summary>
public sealed record TxnSettings
{
    /// <summary>Parallel commits (STAGING record in the final round); off: classic two-phase commit.</summary>
    public bool ParallelCommits { get; init; } = true;

    /// <summary>One-phase commit of single-range transactions.</summary>
    public bool OnePhase { get; init; } = true;

    /// <summary>Send every write at once as a pipelined intent instead of buffering until commit.</summary>
    public bool PipelineWrites { get; init; }

    /// <summary>Writes buffered before a flush.</summary>
    public int MaxBufferedWrites { get; init; } = 1000;

    public TimeSpan HeartbeatInterval { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>Priority (0: a random normal one; <see cref="TxnPriority.High"/>, <see cref="TxnPriority.Low"/>: the classes).</summary>
    public uint Priority { get; init; }
}

/// <summary>The three outcomes of a commit.</summary>
public enum TxnOutcome
{
    Committed,
    Aborted,
    Ambiguous,
}

/// <summary>A commit's outcome; <see cref="Retryable"/> for aborts that a new attempt may overcome.</summary>
public sealed record TxnResult(TxnOutcome Outcome, string? Reason, HlcTimestamp CommitTimestamp, bool Retryable = true)
{
    public static TxnResult Committed(HlcTimestamp ts) => new(TxnOutcome.Committed, null, ts);

    public static TxnResult Aborted(string reason, bool retryable = true) => new(TxnOutcome.Aborted, reason, HlcTimestamp.Zero, retryable);

    public static TxnResult Ambiguous(string reason) => new(TxnOutcome.Ambiguous, reason, HlcTimestamp.Zero, false);
}

/// <summary>The transaction must restart (retryable abort): thrown by reads and writes; the session reports TxnAborted.</summary>
public sealed class TxnRetryException(string reason) : Exception(reason);

/// <summary>A request of the transaction got a final, non-retryable error (bad input, internal).</summary>
public sealed class TxnRequestException(RpcErrorCode code, string message) : Exception(message)
{
    public RpcErrorCode Code { get; } = code;
}

/// <summary>Coordinates one transaction (see the file header). One operation at a time.</summary>
public sealed class TxnCoordinator
{
    private readonly ITxnSender _sender;
    private readonly TxnSettings _settings;
    private readonly Action<string> _log;
    private readonly Dictionary<byte[], byte[]?> _written = new(ByteArrayComparer.Instance);
    private readonly Dictionary<byte[], byte[]?> _buffer = new(ByteArrayComparer.Instance);
    private readonly Dictionary<byte[], int> _seqs = new(ByteArrayComparer.Instance); // latest write sequence per key
    private int _seq;
    private readonly List<byte[]> _bufferOrder = [];
    private readonly List<byte[]> _lockKeys = [];
    private readonly HashSet<byte[]> _lockSet = new(ByteArrayComparer.Instance);
    private readonly List<(byte[] Start, byte[]? End, bool Span)> _reads = []; // Span: [Start, End) with End null = to the end; else the key Start
    private readonly List<Task<RpcResponse>> _pipelined = [];
    private readonly CancellationTokenSource _heartbeatStop = new();
    private Task? _heartbeat;
    private volatile string? _abortedBy;
    private bool _finished;
    private bool _staged;

    public TxnCoordinator(ITxnSender sender, HybridClock clock, TxnSettings? settings = null, Action<string>? log = null, TxnEnvironment? env = null)
    {
        _sender = sender;
        _settings = settings ?? new TxnSettings();
        _log = log ?? (_ => { });
        _env = env ?? TxnEnvironment.Default;
        _clock = clock;
        var now = clock.Now();
        var random = _env.Random ?? Random.Shared;
        var priority = _settings.Priority != 0 ? _settings.Priority : TxnPriority.RandomNormal(random);
        var id = new byte[16];
        random.NextBytes(id);
        Meta = new TxnMeta(new Guid(id), 0, now, now, now, priority, []);
    }

    private readonly TxnEnvironment _env;
    private readonly HybridClock _clock;

    /// <summary>The transaction as it stands (timestamps move up with pushes and refreshes).</summary>
    public TxnMeta Meta { get; private set; }

    /// <summary>Set once a background finalisation (record + intent resolution) is running or done.</summary>
    public Task Finalized { get; private set; } = Task.CompletedTask;

    // ---------------------------------------------------------------- reads

    /// <summary>The value of <paramref name="key"/> as this transaction sees it (null: none).</summary>
    /// <exception cref="TxnRetryException">The transaction must restart.</exception>
    public async Task<byte[]?> GetAsync(byte[] key, CancellationToken ct)
    {
        EnsureOpen();
        if (_written.TryGetValue(key, out var own))
        {
            return own;
        }

        while (true)
        {
            var resp = await SendOrRetryAsync(new RpcRequest { Method = RpcMethods.KvTxnRead, Key = key, Txn = Meta.ToDto() }, key, ct);
            if (resp.Status == "uncertain")
            {
                await BumpReadTimestampAsync(HlcTimestamp.Parse(resp.Timestamp!), "uncertain value", ct);
                continue;
            }

            _reads.Add((key, null, false));
            return resp.Found ? resp.Value ?? [] : null;
        }
    }

    /// <summary>
    /// The values of <paramref name="keys"/> (null: none), read in parallel at the transaction's read timestamp: as
    /// several <see cref="GetAsync"/>s, in one round trip to the leaseholders instead of one each.
    /// </summary>
    /// <exception cref="TxnRetryException">The transaction must restart.</exception>
    public async Task<byte[]?[]> GetManyAsync(IReadOnlyList<byte[]> keys, CancellationToken ct)
    {
        EnsureOpen();
        var results = new byte[]?[keys.Count];
        var index = new Dictionary<byte[], List<int>>(ByteArrayComparer.Instance);
        for (var i = 0; i < keys.Count; i++)
        {
            if (_written.TryGetValue(keys[i], out var own))
            {
                results[i] = own;
            }
            else if (index.TryGetValue(keys[i], out var list))
            {
                list.Add(i);
            }
            else
            {
                index[keys[i]] = [i];
            }
        }

        if (index.Count == 0)
        {
            return results;
        }

        while (true)
        {
            // One request per range: each leaseholder reads the keys of its range and hands back the others.
            IReadOnlyList<byte[]> rest = [.. index.Keys];
            var uncertain = HlcTimestamp.Zero;
            while (rest.Count > 0)
            {
                var resp = await SendOrRetryAsync(new RpcRequest { Method = RpcMethods.KvTxnRead, Keys = rest, Key = rest[0], Txn = Meta.ToDto() }, rest[0], ct);
                if (resp.Status == "uncertain")
                {
                    uncertain = HlcTimestamp.Parse(resp.Timestamp!);
                    break;
                }

                var values = resp.Values ?? [];
                var others = resp.LockKeys ?? [];
                if (values.Count != rest.Count || others.Count >= rest.Count)
                {
                    throw new TxnRequestException(RpcErrorCode.Internal, "a multi-key read answered no progress");
                }

                var notHere = new HashSet<byte[]>(others, ByteArrayComparer.Instance);
                for (var j = 0; j < rest.Count; j++)
                {
                    if (!notHere.Contains(rest[j]))
                    {
                        foreach (var i in index[rest[j]])
                        {
                            results[i] = values[j];
                        }
                    }
                }

                rest = others;
            }

            if (!uncertain.IsZero)
            {
                await BumpReadTimestampAsync(uncertain, "uncertain value", ct);
                continue; // read everything again at the new timestamp
            }

            foreach (var k in index.Keys)
            {
                _reads.Add((k, null, false));
            }

            return results;
        }
    }

    /// <summary>The rows in [<paramref name="start"/>, <paramref name="end"/>) as this transaction sees them, at most <paramref name="limit"/> (0: all).</summary>
    public async Task<IReadOnlyList<KvPair>> ScanAsync(byte[] start, byte[]? end, int limit, CancellationToken ct)
    {
        EnsureOpen();
        while (true)
        {
            var rows = new List<KvPair>();
            var spans = new List<(byte[], byte[]?, bool)>();
            var cur = start;
            var restart = false;
            while (true)
            {
                var resp = await SendOrRetryAsync(new RpcRequest { Method = RpcMethods.KvTxnRead, Key = cur, EndKey = end, Limit = 10_000, Txn = Meta.ToDto() }, cur, ct);
                if (resp.Status == "uncertain")
                {
                    await BumpReadTimestampAsync(HlcTimestamp.Parse(resp.Timestamp!), "uncertain value", ct);
                    restart = true;
                    break;
                }

                var got = resp.Rows ?? [];
                rows.AddRange(got);
                var rangeEnd = resp.Range?.EndKey;
                var spanEnd = end is not null && (rangeEnd is null || KeyOrder.Compare(end, rangeEnd) <= 0) ? end : rangeEnd;
                if (got.Count >= 10_000)
                {
                    // A full page: the range has more; go on just after the last row (the span read so far ends there).
                    var next = got[^1].Key.Append((byte)0).ToArray();
                    spans.Add((cur, next, true));
                    cur = next;
                    continue;
                }

                spans.Add((cur, spanEnd, true));
                if (spanEnd is null || (end is not null && KeyOrder.Compare(spanEnd, end) >= 0))
                {
                    break;
                }

                cur = spanEnd;
            }

            if (restart)
            {
                continue;
            }

            _reads.AddRange(spans);

            // Overlay this transaction's own writes.
            var merged = new SortedDictionary<byte[], byte[]>(Comparer<byte[]>.Create((a, b) => KeyOrder.Compare(a, b)));
            foreach (var r in rows)
            {
                merged[r.Key] = r.Value;
            }

            foreach (var (k, v) in _written)
            {
                if (KeyOrder.Compare(k, start) >= 0 && (end is null || KeyOrder.Compare(k, end) < 0))
                {
                    if (v is null)
                    {
                        merged.Remove(k);
                    }
                    else
                    {
                        merged[k] = v;
                    }
                }
            }

            var result = merged.Select(kv => new KvPair(kv.Key, kv.Value));
            return (limit > 0 ? result.Take(limit) : result).ToList();
        }
    }

    // ---------------------------------------------------------------- writes

    /// <summary>Writes <paramref name="value"/> (null: deletes) at <paramref name="key"/>.</summary>
    public async Task WriteAsync(byte[] key, byte[]? value, CancellationToken ct)
    {
        EnsureOpen();
        _written[key] = value;
        if (!_buffer.ContainsKey(key))
        {
            _bufferOrder.Add(key);
        }

        _buffer[key] = value;
        _seqs[key] = ++_seq;
        if (_settings.PipelineWrites || _buffer.Count >= _settings.MaxBufferedWrites)
        {
            await FlushAsync(ct);
        }
    }

    /// <summary>Sends the buffered writes as pipelined intents (not awaited: proven at commit).</summary>
    private async Task FlushAsync(CancellationToken ct)
    {
        if (_buffer.Count == 0)
        {
            return;
        }

        SetAnchor();
        foreach (var group in await GroupByRangeAsync(_bufferOrder, ct))
        {
            var writes = group.Select(k => new KvWrite(k, _buffer[k]) { Seq = _seqs[k] }).ToList();
            foreach (var k in group)
            {
                AddLockKey(k);
            }

            var req = new RpcRequest { Method = RpcMethods.KvTxnWrite, Mode = "intent", Writes = writes, Txn = Meta.ToDto() };
            _pipelined.Add(SendCatchingAsync(req, group[0], CancellationToken.None));
        }

        _buffer.Clear();
        _bufferOrder.Clear();
        StartHeartbeat();
    }

    // ---------------------------------------------------------------- commit

    /// <summary>Commits (see the file header). Never throws for protocol outcomes: they are the result.</summary>
    public async Task<TxnResult> CommitAsync(CancellationToken ct)
    {
        if (_finished)
        {
            return TxnResult.Aborted("the transaction already ended", retryable: false);
        }

        _finished = true;
        try
        {
            return await CommitCoreAsync(ct);
        }
        catch (TxnRetryException e)
        {
            return await AbortCommitAsync(e.Message);
        }
        catch
        {
            // An injected crash, or a bug: this coordinator stops here (no more heartbeats); others recover.
            StopHeartbeat();
            throw;
        }
    }

    /// <summary>
    /// Aborts during commit. Once a stage was sent, the record may be STAGING: the coordinator may abort it itself
    /// (it alone could have declared an implicit commit, and it did not), but status recovery by someone else may
    /// have committed it meanwhile, so the record's answer decides the outcome.
    /// </summary>
    private async Task<TxnResult> AbortCommitAsync(string reason)
    {
        if (!_staged)
        {
            await AbortAsync(reason);
            return TxnResult.Aborted(reason);
        }

        StopHeartbeat();
        var meta = Meta;
        var keys = _lockKeys.ToList();
        for (var i = 0; i < 50; i++)
        {
            var end = await SendCatchingAsync(
                new RpcRequest { Method = RpcMethods.KvTxnEnd, Mode = "abort", Flag = true, Txn = meta.ToDto(), LockKeys = keys }, meta.Anchor, CancellationToken.None);
            switch (end.Status)
            {
                case "aborted":
                    Finalized = _env.Spawn(() => ResolveAllAsync(meta, "aborted", keys));
                    return TxnResult.Aborted(reason);
                case "committed":
                    var ts = HlcTimestamp.Parse(end.Timestamp!);
                    Finalized = _env.Spawn(() => ResolveAllAsync(meta with { WriteTimestamp = ts }, "committed", keys));
                    return TxnResult.Committed(ts);
            }

            await Task.Delay(TimeSpan.FromMilliseconds(100), _env.Time);
        }

        return TxnResult.Ambiguous($"{reason}; then the record could not be reached to abort it");
    }

    private async Task<TxnResult> CommitCoreAsync(CancellationToken ct)
    {
        if (_abortedBy is { } why)
        {
            await AbortAsync(why);
            return TxnResult.Aborted(why);
        }

        if (_buffer.Count == 0 && _lockKeys.Count == 0)
        {
            StopHeartbeat();
            return TxnResult.Committed(Meta.ReadTimestamp); // read-only: nothing to commit
        }

        await Point("coordinator.before-commit");
        SetAnchor();
        if (_heartbeat is null && _clock.Now().WallNanos - Meta.MinTimestamp.WallNanos > TxnTiming.Expiry.Ticks * 100 / 2)
        {
            // A long transaction about to write for the first time: create its record with a fresh heartbeat first,
            // or a pusher meeting its first intents would judge it by its (old) start and abort it.
            await SendCatchingAsync(new RpcRequest { Method = RpcMethods.KvTxnHeartbeat, Txn = Meta.ToDto(), LockKeys = [] }, Meta.Anchor, ct);
        }

        var onePhase = _settings.OnePhase && _lockKeys.Count == 0 && await SingleRangeAsync(_bufferOrder, ct);
        for (var attempt = 0; attempt < 8; attempt++)
        {
            if (Meta.WriteTimestamp > Meta.ReadTimestamp && !_env.Bugs.HasFlag(TxnBugs.SkipRefresh) && !await RefreshAsync(Meta.WriteTimestamp, ct))
            {
                return await AbortCommitAsync($"read refresh to {Meta.WriteTimestamp} failed: a key this transaction read changed");
            }

            TxnResult? done;
            HlcTimestamp? pushedTo;
            if (onePhase)
            {
                (done, pushedTo) = await OnePhaseAsync(ct);
            }
            else if (_settings.ParallelCommits)
            {
                (done, pushedTo) = await ParallelCommitAsync(ct);
            }
            else
            {
                (done, pushedTo) = await TwoPhaseAsync(ct);
            }

            if (done is not null)
            {
                return done;
            }

            Meta = Meta with { WriteTimestamp = HlcTimestamp.Max(Meta.WriteTimestamp, pushedTo!.Value) };
        }

        return await AbortCommitAsync("pushed too many times while committing");
    }

    private async Task<(TxnResult?, HlcTimestamp?)> OnePhaseAsync(CancellationToken ct)
    {
        var writes = _bufferOrder.Select(k => new KvWrite(k, _buffer[k]) { Seq = _seqs[k] }).ToList();
        var req = new RpcRequest { Method = RpcMethods.KvTxnWrite, Mode = "onephase", Writes = writes, Txn = Meta.ToDto(), Flag = _reads.Count == 0 };
        await Point("coordinator.before-onephase");
        var resp = await SendCatchingAsync(req, writes[0].Key, ct);
        if (resp.Error is { } e)
        {
            return e.Code switch
            {
                RpcErrorCode.TxnAborted => (TxnResult.Aborted(e.Message), null),
                RpcErrorCode.Ambiguous or RpcErrorCode.Unavailable => (TxnResult.Ambiguous($"one-phase commit: {e.Message}"), null),
                _ => (TxnResult.Aborted(e.Message, retryable: false), null),
            };
        }

        if (resp.Status == "pushed")
        {
            return (null, HlcTimestamp.Parse(resp.Timestamp!));
        }

        _buffer.Clear();
        _bufferOrder.Clear();
        StopHeartbeat();
        return (TxnResult.Committed(HlcTimestamp.Parse(resp.Timestamp!)), null);
    }

    private async Task<(TxnResult?, HlcTimestamp?)> ParallelCommitAsync(CancellationToken ct)
    {
        // The final batch: buffered writes by range; the anchor's range also stages the record.
        var groups = await GroupByRangeAsync(_bufferOrder, ct);
        foreach (var k in _bufferOrder)
        {
            AddLockKey(k);
        }

        var anchorRange = await _sender.RangeOfAsync(Meta.Anchor, ct);
        var inFlight = _lockKeys.ToList();
        var meta = Meta;
        var stageGroup = groups.FirstOrDefault(g => Contains(anchorRange, g[0]));
        var tasks = new List<Task<RpcResponse>>();
        StartHeartbeat();
        _staged = true;
        await Point("coordinator.before-stage");
        var stage = SendCatchingAsync(
            new RpcRequest
            {
                Method = RpcMethods.KvTxnWrite,
                Mode = "stage",
                Writes = (stageGroup ?? []).Select(k => new KvWrite(k, _buffer[k]) { Seq = _seqs[k] }).ToList(),
                InFlight = inFlight,
                LockKeys = inFlight,
                Txn = meta.ToDto(),
            },
            Meta.Anchor,
            ct);
        foreach (var g in groups.Where(g => g != stageGroup))
        {
            tasks.Add(SendCatchingAsync(
                new RpcRequest { Method = RpcMethods.KvTxnWrite, Mode = "intent", Writes = g.Select(k => new KvWrite(k, _buffer[k]) { Seq = _seqs[k] }).ToList(), Txn = meta.ToDto() },
                g[0],
                ct));
        }

        tasks.AddRange(_pipelined);
        await Point("coordinator.stage-sent");
        var stageResp = await stage;
        var acks = await Task.WhenAll(tasks);
        _pipelined.Clear();
        _buffer.Clear();
        _bufferOrder.Clear();
        await Point("coordinator.after-stage");

        var unclear = stageResp.Error is not null || acks.Any(a => a.Error is not null);
        if (unclear && _env.Bugs.HasFlag(TxnBugs.UnclearIsAborted))
        {
            return (TxnResult.Aborted("unclear final batch (planted bug: reported as aborted)"), null);
        }

        if (unclear)
        {
            var first = stageResp.Error ?? acks.First(a => a.Error is not null).Error!;
            return (await SettleAsync(meta, $"{first.Code}: {first.Message}", ct), null);
        }

        if (stageResp.Status == "committed")
        {
            // An earlier attempt of this stage already led to a decision (e.g. recovered by a pusher).
            StopHeartbeat();
            return (TxnResult.Committed(HlcTimestamp.Parse(stageResp.Timestamp!)), null);
        }

        var maxTs = acks.Select(a => HlcTimestamp.Parse(a.Timestamp!)).Append(HlcTimestamp.Parse(stageResp.Timestamp!)).Max();
        if (stageResp.Status == "pushed" || (maxTs > meta.WriteTimestamp && !_env.Bugs.HasFlag(TxnBugs.IgnorePushedWrites)))
        {
            // Not implicitly committed at meta's timestamp: refresh and re-stage higher (the loop does both).
            return (null, maxTs);
        }

        // Implicitly committed: the STAGING record at T and every listed write acknowledged at or below T.
        StopHeartbeat();
        await Point("coordinator.after-implicit-commit");
        var commitTs = meta.WriteTimestamp;
        Finalized = _env.Spawn(() => FinalizeAsync(meta, commit: true, inFlight));
        return (TxnResult.Committed(commitTs), null);
    }

    private async Task<(TxnResult?, HlcTimestamp?)> TwoPhaseAsync(CancellationToken ct)
    {
        if (_buffer.Count > 0)
        {
            await FlushAsync(ct);
        }

        var meta = Meta;
        var acks = await Task.WhenAll(_pipelined);
        _pipelined.Clear();
        if (acks.FirstOrDefault(a => a.Error is not null)?.Error is { } err)
        {
            // Nothing is committed before the record says so: aborting is always safe here.
            var reason = $"{err.Code}: {err.Message}";
            await AbortAsync(reason);
            return (TxnResult.Aborted(reason, retryable: err.Code is RpcErrorCode.TxnAborted or RpcErrorCode.Unavailable or RpcErrorCode.Ambiguous), null);
        }

        var maxTs = acks.Select(a => HlcTimestamp.Parse(a.Timestamp!)).Append(meta.WriteTimestamp).Max();
        if (maxTs > meta.WriteTimestamp)
        {
            return (null, maxTs);
        }

        await Point("coordinator.before-end");
        var end = await SendCatchingAsync(
            new RpcRequest { Method = RpcMethods.KvTxnEnd, Mode = "commit", Txn = meta.ToDto(), LockKeys = _lockKeys.ToList() }, meta.Anchor, ct);
        if (end.Error is { } e)
        {
            return (await SettleAsync(meta, $"{e.Code}: {e.Message}", ct, twoPhase: true), null);
        }

        switch (end.Status)
        {
            case "pushed":
                return (null, HlcTimestamp.Parse(end.Txn!.WriteTs));
            case "aborted":
                StopHeartbeat();
                Finalized = _env.Spawn(() => ResolveAllAsync(meta, "aborted", _lockKeys.ToList()));
                return (TxnResult.Aborted("the transaction was aborted by a conflicting transaction"), null);
            default:
                StopHeartbeat();
                await Point("coordinator.after-commit");
                var ts = HlcTimestamp.Parse(end.Timestamp!);
                Finalized = _env.Spawn(() => ResolveAllAsync(meta with { WriteTimestamp = ts }, "committed", _lockKeys.ToList()));
                return (TxnResult.Committed(ts), null);
        }
    }

    /// <summary>
    /// The final batch gave an unclear or failed answer: settle the outcome at the record. Status recovery (find or
    /// prevent every listed write, then decide) is safe whatever happened; if the ranges cannot be reached, the
    /// outcome is ambiguous.
    /// </summary>
    private async Task<TxnResult> SettleAsync(TxnMeta meta, string why, CancellationToken ct, bool twoPhase = false)
    {
        StopHeartbeat();
        var deadline = _env.Time.GetUtcNow() + TimeSpan.FromSeconds(20);
        while (_env.Time.GetUtcNow() < deadline)
        {
            RpcResponse rec;
            try
            {
                // Abort of a PENDING (or missing) record; a STAGING one is left for recovery, a final one answers.
                rec = await _sender.SendAsync(new RpcRequest { Method = RpcMethods.KvTxnEnd, Mode = "abort", Txn = meta.ToDto(), LockKeys = _lockKeys.ToList() }, meta.Anchor, ct);
            }
            catch (Exception e) when (e is not OperationCanceledException || !ct.IsCancellationRequested)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(100), _env.Time, ct);
                continue;
            }

            if (rec.Error is not null)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(100), _env.Time, ct);
                continue;
            }

            switch (rec.Status)
            {
                case "aborted":
                    Finalized = _env.Spawn(() => ResolveAllAsync(meta, "aborted", _lockKeys.ToList()));
                    return twoPhase && why.StartsWith("Ambiguous", StringComparison.Ordinal)
                        ? TxnResult.Aborted($"aborted after an unclear commit reply ({why})")
                        : TxnResult.Aborted($"aborted: {why}");
                case "committed":
                    var ts = HlcTimestamp.Parse(rec.Timestamp!);
                    Finalized = _env.Spawn(() => ResolveAllAsync(meta with { WriteTimestamp = ts }, "committed", _lockKeys.ToList()));
                    return TxnResult.Committed(ts);
                case "staging":
                    var staged = (TxnWire.FromDto(rec.Txn, out _) ?? meta) with { Anchor = meta.Anchor };
                    var reached = await StatusRecovery.RunAsync(SendCatchingAsync, staged, rec.InFlight ?? [], prevent: true, ct);
                    await Task.Delay(TimeSpan.FromMilliseconds(reached ? 0 : 100), _env.Time, ct);
                    continue;
                default:
                    await Task.Delay(TimeSpan.FromMilliseconds(100), _env.Time, ct);
                    continue;
            }
        }

        return TxnResult.Ambiguous($"the commit may or may not have happened: {why}; its record could not be reached to settle it");
    }

    /// <summary>Explicitly finalises the record, then resolves every intent (background).</summary>
    private async Task FinalizeAsync(TxnMeta meta, bool commit, List<byte[]> keys)
    {
        try
        {
            await Point("coordinator.before-finalize");
            for (var i = 0; i < 50; i++)
            {
                var r = await SendCatchingAsync(
                    new RpcRequest { Method = RpcMethods.KvTxnEnd, Mode = commit ? "commit" : "abort", Txn = meta.ToDto(), LockKeys = keys }, meta.Anchor, CancellationToken.None);
                if (r.Error is null)
                {
                    break;
                }

                await Task.Delay(TimeSpan.FromMilliseconds(100), _env.Time);
            }

            await Point("coordinator.before-resolve");
            await ResolveAllAsync(meta, commit ? "committed" : "aborted", keys);
        }
        catch (InjectedCrash)
        {
            // A crashed coordinator does nothing more: others recover.
        }
        catch (Exception e)
        {
            _log($"txn {meta.Id}: finalisation stopped: {e.Message}");
        }
    }

    /// <summary>Resolves every intent, all ranges at once (each range's keys in one request). The anchor's range
    /// resolved its own keys with the record (kv_txn_end) when that succeeded; asking again is harmless.</summary>
    private async Task ResolveAllAsync(TxnMeta meta, string mode, List<byte[]> keys)
    {
        List<List<byte[]>> groups;
        try
        {
            groups = await GroupByRangeAsync(keys, CancellationToken.None);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            groups = [keys];
        }

        await Task.WhenAll(groups.Select(async group =>
        {
            var rest = group;
            for (var i = 0; i < 200 && rest.Count > 0; i++)
            {
                var r = await SendCatchingAsync(new RpcRequest { Method = RpcMethods.KvResolve, Mode = mode, Txn = meta.ToDto(), LockKeys = rest }, rest[0], CancellationToken.None);
                if (r.Error is not null)
                {
                    await Task.Delay(TimeSpan.FromMilliseconds(100), _env.Time);
                    continue;
                }

                rest = r.LockKeys?.ToList() ?? [];
            }
        }));
    }

    // ---------------------------------------------------------------- abort

    /// <summary>Rolls the transaction back (explicit rollback by the client).</summary>
    public async Task RollbackAsync()
    {
        if (_finished)
        {
            return;
        }

        _finished = true;
        await AbortAsync("rolled back");
    }

    private async Task AbortAsync(string reason)
    {
        _finished = true;
        StopHeartbeat();
        if (_pipelined.Count > 0)
        {
            await Task.WhenAll(_pipelined);
            _pipelined.Clear();
        }

        if (_lockKeys.Count == 0)
        {
            return;
        }

        var meta = Meta;
        var keys = _lockKeys.ToList();
        _log($"txn {meta.Id}: aborting ({reason})");
        Finalized = _env.Spawn(async () =>
        {
            var end = await SendCatchingAsync(new RpcRequest { Method = RpcMethods.KvTxnEnd, Mode = "abort", Txn = meta.ToDto(), LockKeys = keys }, meta.Anchor, CancellationToken.None);
            if (end.Status == "aborted")
            {
                await ResolveAllAsync(meta, "aborted", keys);
            }
        });
        await Task.CompletedTask;
    }

    // ---------------------------------------------------------------- heartbeat

    private void StartHeartbeat()
    {
        if (_heartbeat is not null)
        {
            return;
        }

        var token = _heartbeatStop.Token;
        _heartbeat = _env.Spawn(async () =>
        {
            try
            {
                while (!token.IsCancellationRequested)
                {
                    await Task.Delay(_settings.HeartbeatInterval, _env.Time, token);
                    var resp = await SendCatchingAsync(
                        new RpcRequest { Method = RpcMethods.KvTxnHeartbeat, Txn = Meta.ToDto(), LockKeys = LockKeysCopy() }, Meta.Anchor, token);
                    if (resp.Status == "aborted")
                    {
                        _abortedBy = "the transaction was aborted by a conflicting transaction (found by its heartbeat)";
                        return;
                    }
                }
            }
            catch (OperationCanceledException)
            {
            }
        });
    }

    private void StopHeartbeat() => _heartbeatStop.Cancel();

    // ---------------------------------------------------------------- refresh

    /// <summary>Moves the read timestamp up to <paramref name="ts"/> if every read is still valid there, else restarts.</summary>
    private async Task BumpReadTimestampAsync(HlcTimestamp ts, string why, CancellationToken ct)
    {
        var to = HlcTimestamp.Max(ts, Meta.WriteTimestamp);
        if (!await RefreshAsync(to, ct))
        {
            throw new TxnRetryException($"{why}: restart needed (a key read earlier changed before {to})");
        }
    }

    /// <summary>Read refresh (txn-pitfalls 9): true and the read timestamp moved to <paramref name="to"/>, or false.</summary>
    private async Task<bool> RefreshAsync(HlcTimestamp to, CancellationToken ct)
    {
        if (to <= Meta.ReadTimestamp)
        {
            return true;
        }

        var from = Meta.ReadTimestamp;

        // Spans one request each; point reads in multi-key requests (one per range, each leaseholder handing back
        // the keys of other ranges), all in parallel.
        var checks = _reads.Where(r => r.Span).Select(span => SendCatchingAsync(
            new RpcRequest { Method = RpcMethods.KvRefresh, Key = span.Start, EndKey = span.End, Mode = "span", FromTimestamp = from.ToString(), Timestamp = to.ToString(), Txn = Meta.ToDto() },
            span.Start,
            ct)).ToList();
        var points = _reads.Where(r => !r.Span).Select(r => r.Start).Distinct(ByteArrayComparer.Instance).ToList();
        var pointCheck = RefreshPointsAsync(points, from, to, ct);
        var results = await Task.WhenAll(checks);
        if (!await pointCheck)
        {
            return false;
        }

        foreach (var r in results)
        {
            if (r.Error is not null || r.Status != "ok")
            {
                return false;
            }

            // A scan's span may cross ranges: the reply covers only up to its range's end.
            // (Spans are recorded per range by ScanAsync, so this is exact.)
        }

        Meta = Meta with { ReadTimestamp = to, WriteTimestamp = HlcTimestamp.Max(Meta.WriteTimestamp, to) };
        return true;
    }

    private async Task<bool> RefreshPointsAsync(List<byte[]> keys, HlcTimestamp from, HlcTimestamp to, CancellationToken ct)
    {
        IReadOnlyList<byte[]> rest = keys;
        while (rest.Count > 0)
        {
            var r = await SendCatchingAsync(
                new RpcRequest { Method = RpcMethods.KvRefresh, Key = rest[0], Keys = rest, Mode = "keys", FromTimestamp = from.ToString(), Timestamp = to.ToString(), Txn = Meta.ToDto() },
                rest[0],
                ct);
            if (r.Error is not null || r.Status != "ok" || (r.LockKeys?.Count ?? 0) >= rest.Count)
            {
                return false;
            }

            rest = r.LockKeys ?? [];
        }

        return true;
    }

    // ---------------------------------------------------------------- helpers

    private void EnsureOpen()
    {
        if (_finished)
        {
            throw new TxnRequestException(RpcErrorCode.BadRequest, "the transaction already ended");
        }

        if (_abortedBy is { } why)
        {
            throw new TxnRetryException(why);
        }
    }

    private void SetAnchor()
    {
        if (Meta.Anchor.Length == 0)
        {
            var first = _lockKeys.Count > 0 ? _lockKeys[0] : _bufferOrder[0];
            Meta = Meta with { Anchor = first };
        }
    }

    private void AddLockKey(byte[] k)
    {
        lock (_lockKeys)
        {
            if (_lockSet.Add(k))
            {
                _lockKeys.Add(k);
            }
        }
    }

    /// <summary>A copy of the lock keys (the heartbeat reads them from its own task).</summary>
    private List<byte[]> LockKeysCopy()
    {
        lock (_lockKeys)
        {
            return _lockKeys.ToList();
        }
    }

    private static bool Contains((byte[] Start, byte[]? End) range, byte[] key) =>
        KeyOrder.Compare(key, range.Start) >= 0 && (range.End is null || KeyOrder.Compare(key, range.End) < 0);

    private async Task<List<List<byte[]>>> GroupByRangeAsync(IReadOnlyList<byte[]> keys, CancellationToken ct)
    {
        var groups = new List<(byte[] Start, byte[]? End, List<byte[]> Keys)>();
        foreach (var k in keys)
        {
            var g = groups.FirstOrDefault(x => Contains((x.Start, x.End), k));
            if (g.Keys is null)
            {
                var (s, e) = await _sender.RangeOfAsync(k, ct);
                g = (s, e, []);
                groups.Add(g);
            }

            g.Keys.Add(k);
        }

        return groups.Select(g => g.Keys).ToList();
    }

    private async Task<bool> SingleRangeAsync(IReadOnlyList<byte[]> keys, CancellationToken ct) => (await GroupByRangeAsync(keys, ct)).Count == 1;

    /// <summary>Sends; a transport failure becomes an Unavailable answer (for writes: outcome unknown).</summary>
    private async Task<RpcResponse> SendCatchingAsync(RpcRequest request, byte[] route, CancellationToken ct)
    {
        try
        {
            return await _sender.SendAsync(request, route, ct);
        }
        catch (Exception e) when (e is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            return RpcResponse.Fail(RpcErrorCode.Unavailable, e.Message);
        }
    }

    /// <summary>Sends a read-side request; errors become a restart (retryable) or a final request error.</summary>
    private async Task<RpcResponse> SendOrRetryAsync(RpcRequest request, byte[] route, CancellationToken ct)
    {
        var resp = await SendCatchingAsync(request, route, ct);
        if (resp.Error is { } e)
        {
            if (e.Code is RpcErrorCode.TxnAborted or RpcErrorCode.Unavailable or RpcErrorCode.Ambiguous or RpcErrorCode.NotLeaseholder or RpcErrorCode.RangeNotFound)
            {
                throw new TxnRetryException(e.Message);
            }

            throw new TxnRequestException(e.Code, e.Message);
        }

        return resp;
    }

    private Task Point(string name) =>
        _env.Faults is { } f ? f(name) : FaultPoints.Active ? FaultPoints.HitAsync(name) : Task.CompletedTask;
}
