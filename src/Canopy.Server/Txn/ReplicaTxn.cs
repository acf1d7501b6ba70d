// The replica side of transactions: what a leaseholder does with a transaction's per-range requests
// ===================================================================================================
//
// Every request here is evaluated at the range's leaseholder under the latches of the keys it touches (and of the
// transaction record it reads or writes), and its effects are replicated as one EvalCommand (engine puts/deletes) that
// applies only under the lease it was evaluated under. Latches are held until the command applied here, so a later
// request on the same keys evaluates against the new state.
//
// Concurrency control (DESIGN §8; txn-pitfalls 8-12):
// - Timestamp cache (per range, in memory, reset to the lease start on every new lease): every read records its
//   timestamp; a write below a served read of its key is pushed above it. Scans record their span, and wait for the
//   writes already evaluated in it (the in-flight set) after recording, so no write can land unseen below them.
// - Intents: a reader or writer that meets another transaction's intent pushes that transaction at its record
//   (kv_txn_push): a reader asks for a timestamp push above its read, a writer for an abort. A pushee whose heartbeat
//   expired is aborted (or, if STAGING, recovered); a live one makes the pusher wait (long poll at the record, the
//   wait queue) with distributed deadlock detection (TxnWaitRegistry). The decided intent is then resolved here.
// - Write-too-old: a write below the newest committed version of its key is moved just above it.
// Record requests (at the anchor's leaseholder): heartbeat (creates PENDING), stage (STAGING, only at exactly the
// transaction's write timestamp: a pushed transaction must refresh and re-stage), end (COMMITTED / ABORTED), push,
// recover (finalise an abandoned STAGING record after status recovery). Legal transitions are enforced here.
// Status recovery (txn-pitfalls 3): for each write the STAGING record lists, kv_query_intent finds the intent (right
// epoch, at or below the staging timestamp) or, if missing, raises that key's timestamp cache to the staging timestamp
// first, so the write can never land at or below it; then kv_txn_recover commits (all found) or aborts (any
// prevented), but only if the record did not move meanwhile.
namespace Canopy.Server;

using System.Collections.Concurrent;
using Canopy.Client;
using Canopy.Clock;
using Canopy.Host;
using Canopy.Mvcc;
using Canopy.Ranges;
using Canopy.Rpc;
using Canopy.Storage;
using Canopy.Txn;

/// <summary>What the replica side of transactions needs from its server (CanopyServer; the simulation's servers).</summary>
internal interface IReplicaHost
{
    HybridClock Clock { get; }

    TimeSpan MaxOffset { get; }

    TimeProvider Time { get; }

    KeyLatches Latches { get; }

    /// <summary>Cancelled when the server stops.</summary>
    CancellationToken Stopping { get; }

    /// <summary>Planted bugs of the replica side (tests only).</summary>
    TxnBugs Bugs => TxnBugs.None;

    (RangeStateMachine? Sm, RpcResponse? Error) Locate(byte[] key);

    /// <summary>The lease to serve under and the timestamp to serve at, or the error to answer.</summary>
    Task<(Lease? Lease, HlcTimestamp Timestamp, RpcResponse? Error)> EnsureLeaseAsync(RangeStateMachine sm, CancellationToken ct);

    /// <summary>Proposes a command to the range's log; completes once applied and written (or provably not).</summary>
    Task<ProposeOutcome> ProposeAsync(ulong rangeId, byte[] command, CancellationToken ct);

    /// <summary>Sends to the leaseholder of <paramref name="routeKey"/>'s range (itself included); final errors come back in the answer.</summary>
    Task<RpcResponse> RouteAsync(RpcRequest request, byte[] routeKey, CancellationToken ct);

    RangeInfo Info(RangeStateMachine sm);
}

/// <summary>One key of a write request.</summary>
internal readonly record struct KeyWrite(byte[] Key, byte[]? Value, int Seq = 0);

/// <summary>The replica side of transactions at one server (see the file header).</summary>
internal sealed class TxnReplica(IReplicaHost host)
{
    /// <summary>A record not heartbeaten for this long is abandoned (its coordinator heartbeats every second).</summary>
    public static readonly TimeSpan TxnExpiry = TxnTiming.Expiry;

    /// <summary>Longest a request waits on other transactions before giving up (below the router's attempt timeout).</summary>
    private static readonly TimeSpan MaxConflictWait = TimeSpan.FromSeconds(8);

    private readonly TxnWaitRegistry _waits = new(host.Time);
    private readonly ConcurrentDictionary<ulong, RangeConcurrency> _concurrency = new();

    /// <summary>Per-range concurrency state at the leaseholder.</summary>
    private sealed class RangeConcurrency
    {
        public readonly object Gate = new();
        public readonly TimestampCache Cache = new();
        public readonly Dictionary<byte[], int> InFlight = new(ByteArrayComparer.Instance);
        public ulong LeaseSequence = ulong.MaxValue;

        /// <summary>The closed timestamp: no write is evaluated at or below it any more (the cache's low water is at least it).</summary>
        public HlcTimestamp Closed;

        /// <summary>Writes evaluated (timestamp chosen) but not yet applied: id → the lowest timestamp they may write at.</summary>
        public readonly Dictionary<long, HlcTimestamp> Evaluating = [];
        public long NextEval;
    }

    private RangeConcurrency Concurrency(RangeStateMachine sm, Lease lease)
    {
        var c = _concurrency.GetOrAdd(sm.RangeId, _ => new RangeConcurrency());
        lock (c.Gate)
        {
            if (c.LeaseSequence != lease.Sequence)
            {
                c.Cache.Reset(lease.Start);
                c.LeaseSequence = lease.Sequence;
                c.Closed = lease.Start; // every write under this lease is above its start
            }
        }

        return c;
    }

    public async Task<RpcResponse> HandleAsync(RpcRequest request, CancellationToken ct)
    {
        return request.Method switch
        {
            RpcMethods.KvTxnRead => await TxnReadAsync(request, ct),
            RpcMethods.KvTxnWrite => await TxnWriteAsync(request, ct),
            RpcMethods.KvTxnEnd or RpcMethods.KvTxnHeartbeat or RpcMethods.KvTxnRecover => await RecordRequestAsync(request, ct),
            RpcMethods.KvTxnPush => await PushAsync(request, ct),
            RpcMethods.KvTxnDeps => TxnDeps(request),
            RpcMethods.KvResolve => await ResolveAsync(request, ct),
            RpcMethods.KvQueryIntent => await QueryIntentAsync(request, ct),
            RpcMethods.KvRefresh => await RefreshAsync(request, ct),
            _ => RpcResponse.Fail(RpcErrorCode.BadRequest, $"unknown method '{request.Method}'"),
        };
    }

    // ---------------------------------------------------------------- closed timestamps (change feeds)

    /// <summary>
    /// Closes <paramref name="target"/> on the range (if above what is closed: no write is evaluated at or below it
    /// from now on; the timestamp cache's low water rises to it) and returns the bound for resolved timestamps: the
    /// closed timestamp, lowered below every write evaluated but not yet applied. Call only as the leaseholder, under
    /// <paramref name="lease"/>.
    /// </summary>
    public HlcTimestamp CloseAndBound(RangeStateMachine sm, Lease lease, HlcTimestamp target)
    {
        var conc = Concurrency(sm, lease);
        lock (conc.Gate)
        {
            if (target > conc.Closed)
            {
                conc.Cache.AdvanceLowWater(target);
                conc.Closed = target;
            }

            var bound = conc.Closed;
            foreach (var ts in conc.Evaluating.Values)
            {
                if (ts.Prev() < bound)
                {
                    bound = ts.Prev();
                }
            }

            return bound;
        }
    }

    /// <summary>
    /// Pushes the transaction of an intent that holds a change feed's resolved timestamp back (as a non-transactional
    /// reader at <paramref name="pushTo"/>): an abandoned transaction is aborted or recovered and its intent resolved;
    /// a finished one's intent is resolved; a live one is left alone (its coordinator resolves it). Best effort.
    /// </summary>
    public async Task PushForFeedAsync(RangeStateMachine sm, byte[] key, HlcTimestamp pushTo, CancellationToken ct)
    {
        if (sm.Mvcc.GetIntent(key) is not { } intent)
        {
            return;
        }

        _ = await HandleConflictAsync(sm, key, intent, pusher: null, abort: false, pushTo, host.Time.GetUtcNow() + TimeSpan.FromMilliseconds(300), ct);
    }

    // ---------------------------------------------------------------- reads

    private async Task<RpcResponse> TxnReadAsync(RpcRequest request, CancellationToken ct)
    {
        TxnMeta? txn = null;
        if (request.Txn is not null)
        {
            txn = TxnWire.FromDto(request.Txn, out var bad);
            if (txn is null)
            {
                return RpcResponse.Fail(RpcErrorCode.BadRequest, bad!);
            }

            if (ObserveTimestamp(txn.WriteTimestamp) is { } skew)
            {
                return skew;
            }
        }

        if (request.Keys is { } many)
        {
            if (txn is null || many.Count is 0 or > 10_000 || many.Any(k => CanopyServer.ValidateKey(k) is not null))
            {
                return RpcResponse.Fail(RpcErrorCode.BadRequest, "a multi-key read needs a transaction and 1 to 10,000 valid keys");
            }

            return await ReadManyAsync(many, txn, ct);
        }

        var point = request.EndKey is null && request.Limit == 0;
        if (point)
        {
            if (CanopyServer.ValidateKey(request.Key) is { } badKey)
            {
                return RpcResponse.Fail(RpcErrorCode.BadRequest, badKey);
            }
        }

        return await ReadAsync(request.Key is { Length: > 0 } k ? k : [0x01], request.EndKey, point, request.Limit, txn, ct);
    }

    /// <summary>A point read (<paramref name="point"/>) or a scan, transactional or not, with conflict handling.</summary>
    public async Task<RpcResponse> ReadAsync(byte[] key, byte[]? endKey, bool point, int limit, TxnMeta? txn, CancellationToken ct, HlcTimestamp? at = null)
    {
        var (sm, error) = host.Locate(key);
        if (sm is null)
        {
            return error!;
        }

        if (at is { } atTs && ObserveTimestamp(atTs) is { } atSkew)
        {
            return atSkew; // a historical read: the timestamp may not lie in this server's future
        }

        var waitUntil = host.Time.GetUtcNow() + MaxConflictWait;
        while (true)
        {
            MvccIntent? conflict = null;
            byte[]? conflictKey = null;
            HlcTimestamp readTs;
            using (var latch = point ? await host.Latches.AcquireAsync(sm.RangeId, [key], ct) : null)
            {
                var (lease, now, leaseError) = await host.EnsureLeaseAsync(sm, ct);
                if (lease is null)
                {
                    return leaseError!;
                }

                var conc = Concurrency(sm, lease);
                readTs = txn?.ReadTimestamp ?? at ?? now;
                var txnId = txn?.Id ?? Guid.Empty;
                var mvccTxn = txn is null ? (MvccTxn?)null : new MvccTxn(txn.Id, txn.Epoch);
                var uncertainty = txn is null ? readTs : HlcTimestamp.Max(readTs, txn.MinTimestamp.Add(host.MaxOffset));
                if (point)
                {
                    var r = sm.Mvcc.GetWithUncertainty(key, readTs, uncertainty, mvccTxn);
                    switch (r.Status)
                    {
                        case MvccReadStatus.Ok:
                            conc.Cache.AddRead(key, readTs, txnId);
                            return new RpcResponse { Found = r.IsFound, Value = r.Value?.Bytes, Timestamp = readTs.ToString(), Range = host.Info(sm) };
                        case MvccReadStatus.ReadWithinUncertainty:
                            return new RpcResponse { Status = "uncertain", Timestamp = r.UncertainTimestamp!.Value.ToString(), Range = host.Info(sm) };
                        default:
                            conflict = r.Intent;
                            conflictKey = key;
                            break;
                    }
                }
                else
                {
                    var d = sm.Descriptor!;
                    var end = endKey is { } e && (d.EndKey is null || e.AsSpan().SequenceCompareTo(d.EndKey) < 0) ? e : d.EndKey;
                    await WaitForWritesInSpanAsync(sm, conc, key, end, readTs, txnId, ct);
                    var max = limit <= 0 ? 10_000 : Math.Min(limit, 10_000);
                    var scan = sm.Mvcc.Scan(key, end, readTs, max, mvccTxn, uncertainty);
                    switch (scan.Status)
                    {
                        case MvccReadStatus.Ok:
                            return new RpcResponse
                            {
                                Rows = scan.Rows.Select(x => new KvPair(x.Key, x.Value)).ToList(),
                                Timestamp = readTs.ToString(),
                                Range = host.Info(sm),
                            };
                        case MvccReadStatus.ReadWithinUncertainty:
                            return new RpcResponse { Status = "uncertain", Timestamp = scan.UncertainTimestamp!.Value.ToString(), Range = host.Info(sm) };
                        default:
                            conflict = scan.Intents[0].Intent;
                            conflictKey = scan.Intents[0].Key;
                            break;
                    }
                }
            }

            // A reader needs the pushee above its read timestamp and uncertainty window (or gone).
            var pushTo = (txn is null ? readTs : HlcTimestamp.Max(readTs, txn.MinTimestamp.Add(host.MaxOffset))).Next();
            var failed = await HandleConflictAsync(sm, conflictKey!, conflict!, txn, abort: false, pushTo, waitUntil, ct);
            if (failed is not null)
            {
                return failed;
            }
        }
    }

    /// <summary>
    /// Point reads of several keys in one request (a transaction's batched reads): the keys of this range are read
    /// under their latches at the transaction's read timestamp, exactly as that many single reads would be (timestamp
    /// cache, uncertainty, conflicts); the answer has one value per key asked (Values, null: absent or not read here)
    /// and lists the keys of other ranges in LockKeys, for the caller to ask their leaseholders.
    /// </summary>
    private async Task<RpcResponse> ReadManyAsync(IReadOnlyList<byte[]> keys, TxnMeta txn, CancellationToken ct)
    {
        var (sm, error) = host.Locate(keys[0]);
        if (sm is null)
        {
            return error!;
        }

        var d = sm.Descriptor!;
        var mine = keys.Where(k => d.Contains(k)).Distinct(ByteArrayComparer.Instance).ToList();
        var rest = keys.Where(k => !d.Contains(k)).ToList();
        var waitUntil = host.Time.GetUtcNow() + MaxConflictWait;
        while (true)
        {
            MvccIntent? conflict = null;
            byte[]? conflictKey = null;
            HlcTimestamp readTs;
            using (await host.Latches.AcquireAsync(sm.RangeId, mine, ct))
            {
                var (lease, _, leaseError) = await host.EnsureLeaseAsync(sm, ct);
                if (lease is null)
                {
                    return leaseError!;
                }

                var conc = Concurrency(sm, lease);
                readTs = txn.ReadTimestamp;
                var mvccTxn = new MvccTxn(txn.Id, txn.Epoch);
                var uncertainty = HlcTimestamp.Max(readTs, txn.MinTimestamp.Add(host.MaxOffset));
                var values = new byte[]?[keys.Count];
                for (var i = 0; i < keys.Count && conflict is null; i++)
                {
                    if (!d.Contains(keys[i]))
                    {
                        continue;
                    }

                    var r = sm.Mvcc.GetWithUncertainty(keys[i], readTs, uncertainty, mvccTxn);
                    switch (r.Status)
                    {
                        case MvccReadStatus.Ok:
                            values[i] = r.IsFound ? r.Value?.Bytes ?? [] : null;
                            break;
                        case MvccReadStatus.ReadWithinUncertainty:
                            return new RpcResponse { Status = "uncertain", Timestamp = r.UncertainTimestamp!.Value.ToString(), Range = host.Info(sm) };
                        default:
                            conflict = r.Intent;
                            conflictKey = keys[i];
                            break;
                    }
                }

                if (conflict is null)
                {
                    foreach (var k in mine)
                    {
                        conc.Cache.AddRead(k, readTs, txn.Id);
                    }

                    return new RpcResponse { Values = values, LockKeys = rest, Timestamp = readTs.ToString(), Range = host.Info(sm) };
                }
            }

            var pushTo = HlcTimestamp.Max(readTs, txn.MinTimestamp.Add(host.MaxOffset)).Next();
            var failed = await HandleConflictAsync(sm, conflictKey!, conflict!, txn, abort: false, pushTo, waitUntil, ct);
            if (failed is not null)
            {
                return failed;
            }
        }
    }

    /// <summary>
    /// Records a span read in the timestamp cache, then waits until every write already evaluated in the span has
    /// applied (a write evaluated after the record is pushed above it; one evaluated before is waited for).
    /// </summary>
    private async Task WaitForWritesInSpanAsync(RangeStateMachine sm, RangeConcurrency conc, byte[] start, byte[]? end, HlcTimestamp ts, Guid txn, CancellationToken ct)
    {
        List<byte[]> pending;
        lock (conc.Gate)
        {
            conc.Cache.AddSpan(start, end, ts, txn);
            pending = conc.InFlight.Keys.Where(k => k.AsSpan().SequenceCompareTo(start) >= 0 && (end is null || k.AsSpan().SequenceCompareTo(end) < 0)).ToList();
        }

        foreach (var k in pending)
        {
            using var _ = await host.Latches.AcquireAsync(sm.RangeId, [k], ct);
        }
    }

    // ---------------------------------------------------------------- writes

    private async Task<RpcResponse> TxnWriteAsync(RpcRequest request, CancellationToken ct)
    {
        var txn = TxnWire.FromDto(request.Txn, out var bad);
        if (txn is null)
        {
            return RpcResponse.Fail(RpcErrorCode.BadRequest, bad!);
        }

        if (ObserveTimestamp(txn.WriteTimestamp) is { } skew)
        {
            return skew;
        }

        var writes = (request.Writes ?? []).Select(w => new KeyWrite(w.Key, w.Value, w.Seq)).ToList();
        foreach (var w in writes)
        {
            if (CanopyServer.ValidateKey(w.Key) is { } badKey)
            {
                return RpcResponse.Fail(RpcErrorCode.BadRequest, badKey);
            }
        }

        var mode = request.Mode ?? "intent";
        if (mode is not ("intent" or "stage" or "onephase"))
        {
            return RpcResponse.Fail(RpcErrorCode.BadRequest, $"unknown write mode '{mode}'");
        }

        if (writes.Count == 0 && mode != "stage")
        {
            return RpcResponse.Fail(RpcErrorCode.BadRequest, "nothing to write");
        }

        var route = writes.Count > 0 ? writes[0].Key : txn.Anchor;
        return await WriteAsync(route, writes, txn, mode, request.InFlight ?? [], request.LockKeys ?? [], request.Flag == true, ct);
    }

    /// <summary>
    /// Writes <paramref name="writes"/> (all in one range) as committed values (mode "plain" without a transaction,
    /// or "onephase") or as intents ("intent"), and with "stage" also the STAGING record of the transaction, whose
    /// anchor must lie in the range.
    /// </summary>
    public async Task<RpcResponse> WriteAsync(
        byte[] route, List<KeyWrite> writes, TxnMeta? txn, string mode, IReadOnlyList<byte[]> inFlight, IReadOnlyList<byte[]> lockKeys, bool mayCommitAbove, CancellationToken ct)
    {
        var (sm, error) = host.Locate(route);
        if (sm is null)
        {
            return error!;
        }

        var d = sm.Descriptor!;
        if (writes.FirstOrDefault(w => !d.Contains(w.Key)) is { Key: not null } outside)
        {
            return RpcResponse.Fail(RpcErrorCode.BadRequest, $"a batch must stay within one range: {RangeDescriptor.KeyText(outside.Key)} is outside {d}");
        }

        var stage = mode == "stage";
        if (stage && !d.Contains(txn!.Anchor))
        {
            return RpcResponse.Fail(RpcErrorCode.BadRequest, "the record of a transaction lives on its anchor's range");
        }

        var waitUntil = host.Time.GetUtcNow() + MaxConflictWait;
        var latchKeys = writes.Select(w => w.Key).ToList();
        if (stage)
        {
            latchKeys.Add(TxnKeys.Record(txn!.Anchor, txn.Id));
        }

        while (true)
        {
            MvccIntent? conflict = null;
            byte[]? conflictKey = null;
            using (await host.Latches.AcquireAsync(sm.RangeId, latchKeys, ct))
            {
                var (lease, now, leaseError) = await host.EnsureLeaseAsync(sm, ct);
                if (lease is null)
                {
                    return leaseError!;
                }

                var conc = Concurrency(sm, lease);
                var txnId = txn?.Id ?? Guid.Empty;
                var ts = txn?.WriteTimestamp ?? now;
                var evalId = -1L;
                lock (conc.Gate)
                {
                    if (ts <= conc.Closed)
                    {
                        // Below the closed timestamp (a transaction older than the closed-timestamp lag): push it to
                        // now, not just above the closed timestamp, or its retry after refreshing would land below
                        // the next closed timestamp again and chase it.
                        ts = HlcTimestamp.Max(ts, now);
                    }

                    // Registered before the timestamp cache is consulted: a scan that records its span after this
                    // waits for us; one that recorded before pushes us (see WaitForWritesInSpanAsync).
                    foreach (var w in writes)
                    {
                        conc.InFlight[w.Key] = conc.InFlight.GetValueOrDefault(w.Key) + 1;
                    }

                    foreach (var w in host.Bugs.HasFlag(TxnBugs.NoTimestampCache) ? [] : writes)
                    {
                        var read = conc.Cache.MaxRead(w.Key, txnId);
                        if (read >= ts)
                        {
                            ts = read.Next();
                        }
                    }

                    if (ts <= conc.Closed)
                    {
                        ts = conc.Closed.Next(); // the closed timestamp (with the NoTimestampCache bug too)
                    }

                    // Until it is applied (or given up), this write holds the range's resolved timestamp below ts.
                    evalId = conc.NextEval++;
                    conc.Evaluating[evalId] = ts;
                }

                try
                {
                    foreach (var w in writes)
                    {
                        var intent = sm.Mvcc.GetIntent(w.Key);
                        if (intent is not null && intent.TxnId != txnId)
                        {
                            conflict = intent;
                            conflictKey = w.Key;
                            break;
                        }

                        if (intent is not null && txn is not null && intent.Epoch > txn.Epoch)
                        {
                            return RpcResponse.Fail(RpcErrorCode.TxnAborted, "a write of an earlier epoch of the transaction arrived late; ignored");
                        }

                        if (sm.Mvcc.GetNewestTimestamp(w.Key) is { } newest && newest >= ts)
                        {
                            ts = newest.Next(); // write-too-old: above the newest version
                        }
                    }

                    if (conflict is null)
                    {
                        return await EvaluateWriteAsync(sm, lease, writes, txn, mode, ts, now, inFlight, lockKeys, mayCommitAbove, ct);
                    }
                }
                finally
                {
                    lock (conc.Gate)
                    {
                        conc.Evaluating.Remove(evalId);
                        foreach (var w in writes)
                        {
                            if (conc.InFlight.TryGetValue(w.Key, out var n))
                            {
                                if (n <= 1)
                                {
                                    conc.InFlight.Remove(w.Key);
                                }
                                else
                                {
                                    conc.InFlight[w.Key] = n - 1;
                                }
                            }
                        }
                    }
                }
            }

            var failed = await HandleConflictAsync(sm, conflictKey!, conflict!, txn, abort: true, HlcTimestamp.Zero, waitUntil, ct);
            if (failed is not null)
            {
                return failed;
            }
        }
    }

    private async Task<RpcResponse> EvaluateWriteAsync(
        RangeStateMachine sm, Lease lease, List<KeyWrite> writes, TxnMeta? txn, string mode, HlcTimestamp ts, HlcTimestamp now,
        IReadOnlyList<byte[]> inFlight, IReadOnlyList<byte[]> lockKeys, bool mayCommitAbove, CancellationToken ct)
    {
        var batch = new WriteBatch();
        TxnRecord? record = null;
        if (mode is "plain" or "onephase")
        {
            if (txn is not null && ts > txn.WriteTimestamp && !mayCommitAbove)
            {
                // The transaction read something: it must refresh its reads up to ts before committing there.
                return new RpcResponse { Status = "pushed", Timestamp = ts.ToString(), Txn = (txn with { WriteTimestamp = ts }).ToDto() };
            }

            foreach (var w in writes)
            {
                if (w.Value is { } v)
                {
                    sm.Mvcc.Put(batch, w.Key, ts, v);
                }
                else
                {
                    sm.Mvcc.Delete(batch, w.Key, ts);
                }
            }
        }
        else
        {
            var t = txn!;
            if (mode == "stage")
            {
                var recordKey = TxnKeys.Record(t.Anchor, t.Id);
                var existing = ReadRecord(sm, recordKey);
                if (existing is { Status: TxnStatus.Aborted })
                {
                    return RpcResponse.Fail(RpcErrorCode.TxnAborted, "the transaction was aborted by a conflicting transaction (its record says ABORTED)");
                }

                if (existing is { Status: TxnStatus.Committed })
                {
                    return new RpcResponse { Status = "committed", Timestamp = existing.WriteTimestamp.ToString(), Txn = t.ToDto() };
                }

                if (existing is not null && existing.Epoch > t.Epoch)
                {
                    return RpcResponse.Fail(RpcErrorCode.TxnAborted, "a stage of an earlier epoch arrived late; ignored");
                }

                var pushedTo = HlcTimestamp.Max(ts, existing?.Epoch == t.Epoch ? existing.WriteTimestamp : HlcTimestamp.Zero);
                if (pushedTo > t.WriteTimestamp)
                {
                    // Staging is only at exactly the transaction's timestamp (txn-pitfalls 1): refresh, then re-stage.
                    // The intents still go in (at the pushed timestamp) so the retry finds them.
                    ts = HlcTimestamp.Max(ts, pushedTo);
                    var pushedMeta = t with { WriteTimestamp = ts };
                    foreach (var w in writes)
                    {
                        PutIntent(sm, batch, w, pushedMeta);
                    }

                    var failed = await ProposeBatchAsync(sm, lease, batch, ct);
                    return failed ?? new RpcResponse { Status = "pushed", Timestamp = ts.ToString(), Txn = pushedMeta.ToDto() };
                }

                record = new TxnRecord(t.Id, TxnStatus.Staging, t.Epoch, t.WriteTimestamp, t.MinTimestamp, t.Priority, now,
                    inFlight, Union(existing?.LockKeys, lockKeys));
                batch.Put(recordKey, record.Encode());
            }

            var meta = t with { WriteTimestamp = ts };
            foreach (var w in writes)
            {
                PutIntent(sm, batch, w, meta);
            }
        }

        if (FaultPoints.Active)
        {
            await FaultPoints.HitAsync($"replica.{mode}.before-propose");
        }

        var error = batch.IsEmpty ? null : await ProposeBatchAsync(sm, lease, batch, ct);
        if (error is not null)
        {
            return error;
        }

        if (record is not null)
        {
            _waits.Notify(record.Id, final: false);
        }

        return new RpcResponse
        {
            Timestamp = ts.ToString(),
            Status = record is not null ? "staging" : null,
            Txn = txn is null ? null : (txn with { WriteTimestamp = HlcTimestamp.Max(txn.WriteTimestamp, ts) }).ToDto(),
            Range = host.Info(sm),
        };
    }

    private static void PutIntent(RangeStateMachine sm, WriteBatch batch, KeyWrite w, TxnMeta t)
    {
        var intent = new MvccIntent(t.Id, t.Epoch, t.WriteTimestamp, w.Value) { Anchor = t.Anchor, MinTimestamp = t.MinTimestamp, Priority = t.Priority, Sequence = w.Seq };
        var r = sm.Mvcc.PutIntent(batch, w.Key, intent);
        if (r.Status != MvccWriteStatus.Ok)
        {
            // Checked under the same latches just before: a bug if it happens.
            throw new InvalidOperationException($"intent write on {RangeDescriptor.KeyText(w.Key)} failed after its checks: {r.Status}");
        }
    }

    private static List<byte[]> Union(IReadOnlyList<byte[]>? a, IReadOnlyList<byte[]> b)
    {
        var set = new HashSet<byte[]>(ByteArrayComparer.Instance);
        var list = new List<byte[]>();
        foreach (var k in (a ?? []).Concat(b))
        {
            if (set.Add(k))
            {
                list.Add(k);
            }
        }

        return list;
    }

    internal static TxnRecord? ReadRecord(RangeStateMachine sm, byte[] recordKey) =>
        sm.Mvcc.Engine.Get(recordKey) is { } bytes ? TxnRecord.Decode(bytes) : null;

    /// <summary>Replicates <paramref name="batch"/> as an eval command; null when applied, else the error to return.</summary>
    /// <remarks>
    /// Waits for the proposal's fate without a timeout (only server shutdown ends the wait), so the caller's latches
    /// stay held until the effects applied or provably never will: a write whose answer was lost must never apply
    /// after a later request (a retry, status recovery's query) evaluated those keys without seeing it. A proposal on a
    /// deposed leaseholder blocks only that server's latches; the new leaseholder has its own.
    /// </remarks>
    private async Task<RpcResponse?> ProposeBatchAsync(RangeStateMachine sm, Lease lease, WriteBatch batch, CancellationToken ct)
    {
        _ = ct;
        var cmd = new RangeCommand.EvalCommand(lease.Sequence, RangeCommand.EvalCommand.FromBatch(batch));
        ProposeOutcome outcome;
        try
        {
            outcome = await host.ProposeAsync(sm.RangeId, cmd.Encode(), host.Stopping);
        }
        catch (OperationCanceledException)
        {
            return RpcResponse.Fail(RpcErrorCode.Ambiguous, $"the server stopped while a write to range {sm.RangeId} was being replicated; it may or may not happen");
        }

        return outcome.Status switch
        {
            ProposeOutcomeStatus.Committed => sm.TakeResult(outcome.Index) switch
            {
                ApplyResult.Applied => null,
                ApplyResult.LeaseChanged => RpcResponse.Fail(RpcErrorCode.Unavailable, $"the lease of range {sm.RangeId} changed during the write; nothing was written"),
                _ => RpcResponse.Fail(RpcErrorCode.BadRequest, "the write was rejected by the range"),
            },
            ProposeOutcomeStatus.NotLeader or ProposeOutcomeStatus.TransferInProgress or ProposeOutcomeStatus.Dropped or ProposeOutcomeStatus.Overloaded =>
                RpcResponse.Fail(RpcErrorCode.Unavailable, $"range {sm.RangeId} could not take the write now ({outcome.Status}); nothing was written"),
            _ => RpcResponse.Fail(RpcErrorCode.Ambiguous, $"the write to range {sm.RangeId} may or may not have happened ({outcome.Status})"),
        };
    }

    /// <summary>Moves the clock to a timestamp a peer sent (HLC receive); an error when it is beyond the max offset.</summary>
    private RpcResponse? ObserveTimestamp(HlcTimestamp ts)
    {
        try
        {
            host.Clock.Update(ts);
            return null;
        }
        catch (ClockOffsetException ex)
        {
            return RpcResponse.Fail(RpcErrorCode.Refused, ex.Message);
        }
    }

    // ---------------------------------------------------------------- conflicts

    /// <summary>
    /// Deals with another transaction's intent on <paramref name="key"/>: pushes its transaction (abort for a writer,
    /// a timestamp push to <paramref name="pushTo"/> for a reader), waiting while it is alive, recovering it if it was
    /// abandoned while STAGING, then resolves the intent here. Null when the caller should evaluate again; otherwise
    /// the error to return (the pusher was chosen as a deadlock victim, or waited too long).
    /// </summary>
    private async Task<RpcResponse?> HandleConflictAsync(
        RangeStateMachine sm, byte[] key, MvccIntent intent, TxnMeta? pusher, bool abort, HlcTimestamp pushTo, DateTimeOffset waitUntil, CancellationToken ct)
    {
        if (intent.Anchor.Length == 0)
        {
            return RpcResponse.Fail(RpcErrorCode.Internal, $"intent on {RangeDescriptor.KeyText(key)} names no anchor; cannot find its transaction");
        }

        var pushee = new TxnMeta(intent.TxnId, intent.Epoch, intent.WriteTimestamp, intent.WriteTimestamp, intent.MinTimestamp, intent.Priority, intent.Anchor);
        IReadOnlyList<string> deps = [];
        var rounds = 0;
        while (true)
        {
            if (host.Time.GetUtcNow() > waitUntil)
            {
                return pusher is not null
                    ? RpcResponse.Fail(RpcErrorCode.TxnAborted, $"waited more than {MaxConflictWait.TotalSeconds:0} s on conflicting transaction {pushee.Id}")
                    : RpcResponse.Fail(RpcErrorCode.Unavailable, $"key {RangeDescriptor.KeyText(key)} stayed locked by transaction {pushee.Id} for {MaxConflictWait.TotalSeconds:0} s");
            }

            if (pusher is not null && rounds > 0)
            {
                var d = await RouteCatchingAsync(new RpcRequest { Method = RpcMethods.KvTxnDeps, Txn = pusher.ToDto() }, pusher.Anchor, ct);
                deps = d.Deps ?? [];
            }

            rounds++;
            var push = await RouteCatchingAsync(
                new RpcRequest
                {
                    Method = RpcMethods.KvTxnPush,
                    Txn = pushee.ToDto(),
                    Pusher = pusher?.ToDto(),
                    Mode = abort ? "abort" : "timestamp",
                    Timestamp = pushTo.ToString(),
                    Deps = deps,
                },
                pushee.Anchor,
                ct);
            if (push.Error is { } e)
            {
                if (e.Code is RpcErrorCode.Unavailable or RpcErrorCode.Ambiguous)
                {
                    await Task.Delay(TimeSpan.FromMilliseconds(50), host.Time, ct);
                    continue;
                }

                return RpcResponse.Fail(e.Code, $"pushing transaction {pushee.Id}: {e.Message}");
            }

            switch (push.Status)
            {
                case "committed":
                case "aborted":
                case "pushed":
                {
                    var final = TxnWire.FromDto(push.Txn, out _) ?? pushee;
                    return await ResolveHereAsync(sm, [key], intent.TxnId, push.Status, final.Epoch, final.WriteTimestamp, ct);
                }

                case "recover":
                    await RecoverAsync(pushee, push, ct);
                    continue;
                case "abort_pusher":
                    return RpcResponse.Fail(RpcErrorCode.TxnAborted, $"deadlock with transaction {pushee.Id}: aborted to break it");
                default: // "wait": the record long-polled for us; go round (refreshing our dependents)
                    continue;
            }
        }
    }

    /// <summary>
    /// Status recovery of an abandoned STAGING transaction (txn-pitfalls 3): find or prevent each listed write, then
    /// decide at the record (only if it did not move). Callers push again afterwards and learn the decision.
    /// </summary>
    private async Task RecoverAsync(TxnMeta pushee, RpcResponse staging, CancellationToken ct)
    {
        if (TxnWire.FromDto(staging.Txn, out _) is { } rec)
        {
            await StatusRecovery.RunAsync(RouteCatchingAsync, rec with { Anchor = pushee.Anchor }, staging.InFlight ?? [], prevent: !host.Bugs.HasFlag(TxnBugs.RecoveryWithoutPrevent), ct);
        }
    }

    /// <summary>Routes; a transport failure (no leaseholder answered) becomes an Unavailable answer.</summary>
    private async Task<RpcResponse> RouteCatchingAsync(RpcRequest request, byte[] routeKey, CancellationToken ct)
    {
        try
        {
            return await host.RouteAsync(request, routeKey, ct);
        }
        catch (Exception e) when (e is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            return RpcResponse.Fail(RpcErrorCode.Unavailable, e.Message);
        }
    }

    /// <summary>Resolves this transaction's intents on <paramref name="keys"/> of the local range (commit, abort or timestamp push).</summary>
    private async Task<RpcResponse?> ResolveHereAsync(
        RangeStateMachine sm, IReadOnlyList<byte[]> keys, Guid txnId, string status, int epoch, HlcTimestamp ts, CancellationToken ct)
    {
        using (await host.Latches.AcquireAsync(sm.RangeId, keys, ct))
        {
            var (lease, _, leaseError) = await host.EnsureLeaseAsync(sm, ct);
            if (lease is null)
            {
                return leaseError;
            }

            var batch = new WriteBatch();
            foreach (var k in keys)
            {
                switch (status)
                {
                    case "committed":
                        var intent = sm.Mvcc.GetIntent(k);
                        if (intent is not null && intent.TxnId == txnId && intent.Epoch == epoch && intent.WriteTimestamp > ts)
                        {
                            // Every write of a committed transaction was at or below its commit timestamp when it
                            // committed. An intent above it is a stray copy of a write (a request delayed in the
                            // network) that landed after its key was resolved, and was pushed above later reads: the
                            // committed version is already there, so the copy goes. Without that version, refuse
                            // rather than lose a write (a protocol bug).
                            if (sm.Mvcc.Engine.Get(MvccKeys.VersionKey(k, ts)) is not null)
                            {
                                sm.Mvcc.ResolveIntent(batch, k, MvccResolution.Abort(txnId));
                                continue;
                            }

                            return RpcResponse.Fail(RpcErrorCode.Internal, $"intent of committed txn {txnId} on {RangeDescriptor.KeyText(k)} above its commit timestamp");
                        }

                        sm.Mvcc.ResolveIntent(batch, k, MvccResolution.Commit(txnId, epoch, ts));
                        break;
                    case "aborted":
                        sm.Mvcc.ResolveIntent(batch, k, MvccResolution.Abort(txnId));
                        break;
                    default:
                        sm.Mvcc.PushIntent(batch, k, txnId, ts);
                        break;
                }
            }

            return batch.IsEmpty ? null : await ProposeBatchAsync(sm, lease, batch, ct);
        }
    }

    // ---------------------------------------------------------------- record requests

    private async Task<RpcResponse> RecordRequestAsync(RpcRequest request, CancellationToken ct)
    {
        var txn = TxnWire.FromDto(request.Txn, out var bad);
        if (txn is null)
        {
            return RpcResponse.Fail(RpcErrorCode.BadRequest, bad!);
        }

        if (ObserveTimestamp(txn.WriteTimestamp) is { } skew)
        {
            return skew;
        }

        var (sm, error) = host.Locate(txn.Anchor);
        if (sm is null)
        {
            return error!;
        }

        var recordKey = TxnKeys.Record(txn.Anchor, txn.Id);

        // Ending a transaction also resolves its intents on this range, in the same command (one proposal fewer).
        var d = sm.Descriptor!;
        var localKeys = request.Method == RpcMethods.KvTxnEnd ? (request.LockKeys ?? []).Where(k => d.Contains(k)).ToList() : [];
        using (await host.Latches.AcquireAsync(sm.RangeId, localKeys.Append(recordKey), ct))
        {
            var (lease, now, leaseError) = await host.EnsureLeaseAsync(sm, ct);
            if (lease is null)
            {
                return leaseError!;
            }

            var rec = ReadRecord(sm, recordKey);
            TxnRecord? next = null;
            RpcResponse answer;
            switch (request.Method)
            {
                case RpcMethods.KvTxnHeartbeat:
                    if (rec is null)
                    {
                        next = new TxnRecord(txn.Id, TxnStatus.Pending, txn.Epoch, txn.WriteTimestamp, txn.MinTimestamp, txn.Priority, now, [], request.LockKeys ?? []);
                    }
                    else if (!rec.IsFinal)
                    {
                        next = rec with { LastHeartbeat = now, LockKeys = Union(rec.LockKeys, request.LockKeys ?? []) };
                    }

                    answer = StatusAnswer(next ?? rec!, txn.Anchor);
                    break;
                case RpcMethods.KvTxnEnd:
                    var commit = request.Mode == "commit";
                    if (rec is { IsFinal: true })
                    {
                        answer = StatusAnswer(rec, txn.Anchor);
                        break;
                    }

                    if (commit && rec is not null && rec.Epoch == txn.Epoch && rec.WriteTimestamp > txn.WriteTimestamp)
                    {
                        answer = new RpcResponse { Status = "pushed", Txn = (txn with { WriteTimestamp = rec.WriteTimestamp }).ToDto() };
                        break;
                    }

                    if (!commit && rec is { Status: TxnStatus.Staging } && !(request.Flag ?? false))
                    {
                        // Aborting a STAGING record could abort an implicitly committed transaction: only status
                        // recovery (kv_txn_recover) may decide one.
                        answer = StatusAnswer(rec, txn.Anchor);
                        break;
                    }

                    next = new TxnRecord(txn.Id, commit ? TxnStatus.Committed : TxnStatus.Aborted, txn.Epoch,
                        commit ? txn.WriteTimestamp : rec?.WriteTimestamp ?? txn.WriteTimestamp, txn.MinTimestamp, txn.Priority, now, [],
                        Union(rec?.LockKeys, request.LockKeys ?? []));
                    answer = StatusAnswer(next, txn.Anchor);
                    break;
                default: // recover: decide a STAGING record, only if it is still what recovery examined
                    if (rec is { Status: TxnStatus.Staging } && rec.Epoch == txn.Epoch && rec.WriteTimestamp == txn.WriteTimestamp)
                    {
                        next = rec with { Status = request.Mode == "commit" ? TxnStatus.Committed : TxnStatus.Aborted, InFlight = [] };
                        answer = StatusAnswer(next, txn.Anchor);
                    }
                    else
                    {
                        answer = rec is null ? new RpcResponse { Status = "pending" } : StatusAnswer(rec, txn.Anchor);
                    }

                    break;
            }

            if (next is not null)
            {
                var batch = new WriteBatch();
                batch.Put(recordKey, next.Encode());
                if (request.Method == RpcMethods.KvTxnEnd && next.IsFinal)
                {
                    var resolution = next.Status == TxnStatus.Committed
                        ? MvccResolution.Commit(txn.Id, next.Epoch, next.WriteTimestamp)
                        : MvccResolution.Abort(txn.Id);
                    foreach (var k in localKeys)
                    {
                        if (next.Status == TxnStatus.Committed && sm.Mvcc.GetIntent(k) is { } i && i.TxnId == txn.Id && i.Epoch == next.Epoch && i.WriteTimestamp > next.WriteTimestamp)
                        {
                            continue; // cannot happen (see ResolveHereAsync); leave it for the checks there
                        }

                        sm.Mvcc.ResolveIntent(batch, k, resolution);
                    }
                }

                if (FaultPoints.Active)
                {
                    await FaultPoints.HitAsync($"replica.{request.Method}.before-propose");
                }

                var failed = await ProposeBatchAsync(sm, lease, batch, ct);
                if (failed is not null)
                {
                    return failed;
                }

                _waits.Notify(txn.Id, next.IsFinal);
            }

            return answer;
        }
    }

    private static RpcResponse StatusAnswer(TxnRecord rec, byte[] anchor) => new()
    {
        Status = rec.Status.Name(),
        Timestamp = rec.WriteTimestamp.ToString(),
        Txn = new TxnMeta(rec.Id, rec.Epoch, rec.WriteTimestamp, rec.WriteTimestamp, rec.MinTimestamp, rec.Priority, anchor).ToDto(),
        InFlight = rec.InFlight,
        LockKeys = rec.LockKeys,
    };

    private async Task<RpcResponse> PushAsync(RpcRequest request, CancellationToken ct)
    {
        var pushee = TxnWire.FromDto(request.Txn, out var bad);
        if (pushee is null)
        {
            return RpcResponse.Fail(RpcErrorCode.BadRequest, bad!);
        }

        TxnMeta? pusher = null;
        if (request.Pusher is not null && (pusher = TxnWire.FromDto(request.Pusher, out bad)) is null)
        {
            return RpcResponse.Fail(RpcErrorCode.BadRequest, bad!);
        }

        var abort = request.Mode == "abort";
        var pushTo = HlcTimestamp.TryParse(request.Timestamp, out var pt) ? pt : HlcTimestamp.Zero;
        var (sm, error) = host.Locate(pushee.Anchor);
        if (sm is null)
        {
            return error!;
        }

        var recordKey = TxnKeys.Record(pushee.Anchor, pushee.Id);
        Task changed;
        using (await host.Latches.AcquireAsync(sm.RangeId, [recordKey], ct))
        {
            var (lease, now, leaseError) = await host.EnsureLeaseAsync(sm, ct);
            if (lease is null)
            {
                return leaseError!;
            }

            var rec = ReadRecord(sm, recordKey);
            if (rec is { IsFinal: true })
            {
                return StatusAnswer(rec, pushee.Anchor);
            }

            var lastAlive = rec?.LastHeartbeat ?? pushee.MinTimestamp;
            var expired = lastAlive.Add(TxnExpiry) < now;

            // A cycle: the pushee waits (transitively) on the pusher. The member of lower priority gives way.
            var deadlock = pusher is not null && (request.Deps ?? []).Contains(pushee.Id.ToString(), StringComparer.OrdinalIgnoreCase);
            var pusherWins = pusher is not null && (pusher.Priority > pushee.Priority || (pusher.Priority == pushee.Priority && pusher.Id.CompareTo(pushee.Id) > 0));
            if (rec is { Status: TxnStatus.Staging })
            {
                // A STAGING record may be implicitly committed: never abort it here. Status recovery decides it
                // safely (it prevents any write still missing). For an abandoned record, or a live one caught in a
                // deadlock while one of its writes waits (that write is missing, so recovery aborts it).
                if (expired || (deadlock && pusherWins))
                {
                    var answer = StatusAnswer(rec, pushee.Anchor);
                    return new RpcResponse { Status = "recover", Txn = answer.Txn, InFlight = rec.InFlight, LockKeys = rec.LockKeys };
                }

                if (deadlock)
                {
                    return new RpcResponse { Status = "abort_pusher" };
                }
            }
            else
            {
                if (!abort && rec is not null && rec.WriteTimestamp >= pushTo)
                {
                    return new RpcResponse { Status = "pushed", Txn = StatusAnswer(rec, pushee.Anchor).Txn };
                }

                // Priority classes (txn-pitfalls 12): a high-priority pusher, or any pusher of a low-priority
                // transaction, does not wait: a writer aborts the pushee, a reader pushes its timestamp.
                var pusherPriority = pusher?.Priority ?? TxnPriority.Normal;
                var byPriority = (pusherPriority == TxnPriority.High && pushee.Priority != TxnPriority.High)
                    || (pushee.Priority == TxnPriority.Low && pusherPriority != TxnPriority.Low);
                if (byPriority && !abort && !expired)
                {
                    var pushed = rec is not null
                        ? rec with { WriteTimestamp = HlcTimestamp.Max(rec.WriteTimestamp, pushTo) }
                        : new TxnRecord(pushee.Id, TxnStatus.Pending, pushee.Epoch, HlcTimestamp.Max(pushee.WriteTimestamp, pushTo), pushee.MinTimestamp,
                            pushee.Priority, lastAlive, [], []);
                    var batch = new WriteBatch();
                    batch.Put(recordKey, pushed.Encode());
                    var failed = await ProposeBatchAsync(sm, lease, batch, ct);
                    if (failed is not null)
                    {
                        return failed;
                    }

                    _waits.Notify(pushee.Id, final: false);
                    return new RpcResponse { Status = "pushed", Txn = StatusAnswer(pushed, pushee.Anchor).Txn };
                }

                if (expired || (deadlock && pusherWins) || byPriority)
                {
                    var aborted = new TxnRecord(pushee.Id, TxnStatus.Aborted, rec?.Epoch ?? pushee.Epoch, rec?.WriteTimestamp ?? pushee.WriteTimestamp,
                        pushee.MinTimestamp, pushee.Priority, lastAlive, [], rec?.LockKeys ?? []);
                    var batch = new WriteBatch();
                    batch.Put(recordKey, aborted.Encode());
                    var failed = await ProposeBatchAsync(sm, lease, batch, ct);
                    if (failed is not null)
                    {
                        return failed;
                    }

                    _waits.Notify(pushee.Id, final: true);
                    return StatusAnswer(aborted, pushee.Anchor);
                }

                if (deadlock)
                {
                    return new RpcResponse { Status = "abort_pusher" };
                }
            }

            // Wait (the wait queue): register for deadlock detection, then long-poll for a change of the record.
            if (pusher is not null)
            {
                _waits.AddWaiter(pushee.Id, pusher.Id, (request.Deps ?? []).Select(s => Guid.TryParse(s, out var g) ? g : Guid.Empty).Where(g => g != Guid.Empty));
            }

            changed = _waits.Changed(pushee.Id);
        }

        await Task.WhenAny(changed, Task.Delay(TxnWaitRegistry.WaitRound, host.Time, ct));
        return new RpcResponse { Status = "wait" };
    }

    private RpcResponse TxnDeps(RpcRequest request)
    {
        var txn = TxnWire.FromDto(request.Txn, out var bad);
        return txn is null
            ? RpcResponse.Fail(RpcErrorCode.BadRequest, bad!)
            : new RpcResponse { Deps = _waits.Dependents(txn.Id).Select(g => g.ToString()).ToList() };
    }

    // ---------------------------------------------------------------- resolution, query, refresh

    private async Task<RpcResponse> ResolveAsync(RpcRequest request, CancellationToken ct)
    {
        var txn = TxnWire.FromDto(request.Txn, out var bad);
        if (txn is null || request.LockKeys is not { Count: > 0 } keys || request.Mode is not ("committed" or "aborted"))
        {
            return RpcResponse.Fail(RpcErrorCode.BadRequest, bad ?? "resolve needs a transaction, keys and a mode (committed | aborted)");
        }

        var (sm, error) = host.Locate(keys[0]);
        if (sm is null)
        {
            return error!;
        }

        var d = sm.Descriptor!;
        var here = keys.Where(k => d.Contains(k)).ToList();
        var rest = keys.Where(k => !d.Contains(k)).ToList();
        var failed = await ResolveHereAsync(sm, here, txn.Id, request.Mode, txn.Epoch, txn.WriteTimestamp, ct);
        return failed ?? new RpcResponse { LockKeys = rest, Range = host.Info(sm) };
    }

    private async Task<RpcResponse> QueryIntentAsync(RpcRequest request, CancellationToken ct)
    {
        var txn = TxnWire.FromDto(request.Txn, out var bad);
        if (txn is null || CanopyServer.ValidateKey(request.Key) is { } badKey && (bad = badKey) is not null)
        {
            return RpcResponse.Fail(RpcErrorCode.BadRequest, bad!);
        }

        if (ObserveTimestamp(txn.WriteTimestamp) is { } skew)
        {
            return skew;
        }

        var key = request.Key!;
        var (sm, error) = host.Locate(key);
        if (sm is null)
        {
            return error!;
        }

        // The latch waits for a write of this key that is being evaluated or replicated right now.
        using (await host.Latches.AcquireAsync(sm.RangeId, [key], ct))
        {
            var (lease, _, leaseError) = await host.EnsureLeaseAsync(sm, ct);
            if (lease is null)
            {
                return leaseError!;
            }

            var intent = sm.Mvcc.GetIntent(key);
            var found = intent is not null && intent.TxnId == txn.Id && intent.Epoch == txn.Epoch && intent.WriteTimestamp <= txn.WriteTimestamp;
            if (!found && request.Mode == "prevent")
            {
                // The write can now never land at or below the staging timestamp (txn-pitfalls 3).
                Concurrency(sm, lease).Cache.AddRead(key, txn.WriteTimestamp, Guid.Empty);
            }

            return new RpcResponse { Found = found };
        }
    }

    private async Task<RpcResponse> RefreshAsync(RpcRequest request, CancellationToken ct)
    {
        var txn = TxnWire.FromDto(request.Txn, out var bad);
        if (txn is null || request.Key is not { Length: > 0 } key || !HlcTimestamp.TryParse(request.FromTimestamp, out var from) || !HlcTimestamp.TryParse(request.Timestamp, out var to))
        {
            return RpcResponse.Fail(RpcErrorCode.BadRequest, bad ?? "refresh needs a transaction, a key and two timestamps");
        }

        if (ObserveTimestamp(to) is { } skew)
        {
            return skew;
        }

        if (request.Keys is { Count: > 0 } many)
        {
            return await RefreshManyAsync(many, txn, from, to, ct);
        }

        var (sm, error) = host.Locate(key);
        if (sm is null)
        {
            return error!;
        }

        var point = request.Mode != "span";
        using (point ? await host.Latches.AcquireAsync(sm.RangeId, [key], ct) : null)
        {
            var (lease, _, leaseError) = await host.EnsureLeaseAsync(sm, ct);
            if (lease is null)
            {
                return leaseError!;
            }

            var conc = Concurrency(sm, lease);
            var d = sm.Descriptor!;
            var end = request.EndKey is { } e && (d.EndKey is null || e.AsSpan().SequenceCompareTo(d.EndKey) < 0) ? e : d.EndKey;
            if (point)
            {
                conc.Cache.AddRead(key, to, txn.Id);
            }
            else
            {
                await WaitForWritesInSpanAsync(sm, conc, key, end, to, txn.Id, ct);
            }

            var changed = sm.Mvcc.FindChange(key, end, from, to, txn.Id, point);
            return new RpcResponse
            {
                Status = changed is null ? "ok" : "changed",
                Value = changed,
                Range = host.Info(sm),
            };
        }
    }

    /// <summary>Refresh of several point reads at once: the keys of this range; the others come back in LockKeys.</summary>
    private async Task<RpcResponse> RefreshManyAsync(IReadOnlyList<byte[]> keys, TxnMeta txn, HlcTimestamp from, HlcTimestamp to, CancellationToken ct)
    {
        var (sm, error) = host.Locate(keys[0]);
        if (sm is null)
        {
            return error!;
        }

        var d = sm.Descriptor!;
        var mine = keys.Where(k => d.Contains(k)).Distinct(ByteArrayComparer.Instance).ToList();
        using (await host.Latches.AcquireAsync(sm.RangeId, mine, ct))
        {
            var (lease, _, leaseError) = await host.EnsureLeaseAsync(sm, ct);
            if (lease is null)
            {
                return leaseError!;
            }

            var conc = Concurrency(sm, lease);
            foreach (var k in mine)
            {
                conc.Cache.AddRead(k, to, txn.Id);
            }

            foreach (var k in mine)
            {
                if (sm.Mvcc.FindChange(k, null, from, to, txn.Id, point: true) is { } changed)
                {
                    return new RpcResponse { Status = "changed", Value = changed, Range = host.Info(sm) };
                }
            }

            return new RpcResponse { Status = "ok", LockKeys = keys.Where(k => !d.Contains(k)).ToList(), Range = host.Info(sm) };
        }
    }
}
