namespace Canopy.Simulation;

using Canopy.Clock;
using Canopy.Ranges;

/// <summary>
/// The lease checker of the range simulation (global truth per range, checked at every apply and every serve):
/// - replicas agree: the lease (and the apply result) after index i is the same on every replica that reaches i,
///   by applying, by a snapshot or by recovering from its engine after a crash; a replica's lease sequence never
///   goes back within one incarnation;
/// - one sequence names one lease: every lease that ever applied with sequence s has the same holder and start
///   (only the expiration may grow: extensions), so the sequence grows on every change of holder;
/// - serve windows [start, expiration − max offset) of leases with different holders never overlap, and come in
///   sequence order;
/// - every read served was checked at an HLC time inside its lease's window, and timestamped at or after the lease's
///   start and below the start of every later lease with another holder; every write that took effect has its
///   timestamp inside the window of the lease it applied under (so below every later lease's start); and in real
///   time no server serves a read under a lease after another holder has served under a later one.
/// </summary>
internal sealed class RangeSimChecker(TimeSpan maxOffset, bool enforce)
{
    private readonly Dictionary<(ulong Group, ulong Index), (Lease Lease, ApplyResult? Result, ulong Server)> _states = [];
    private readonly Dictionary<ulong, SortedDictionary<ulong, LeaseRecord>> _leases = [];
    private readonly Dictionary<(ulong Server, ulong Group), ulong> _lastSeq = [];
    private readonly Dictionary<ulong, (ulong Seq, ulong Holder, long Time)> _latestServe = [];
    private readonly HashSet<(ulong Group, ulong Index)> _writesChecked = [];

    public long Serves { get; private set; }

    /// <summary>Leases (distinct sequences with a holder) that applied, over all ranges.</summary>
    public int LeaseCount => _leases.Values.Sum(l => l.Count);

    public IEnumerable<(ulong Seq, ulong Holder, HlcTimestamp Start, HlcTimestamp Expiration)> Leases(ulong group) =>
        _leases.TryGetValue(group, out var l) ? l.Select(kv => (kv.Key, kv.Value.Holder, kv.Value.Start, kv.Value.MaxExpiration)) : [];

    public void OnRestart(ulong server)
    {
        foreach (var k in _lastSeq.Keys.Where(k => k.Server == server).ToArray())
        {
            _lastSeq.Remove(k);
        }
    }

    /// <summary>Replica <paramref name="server"/> of <paramref name="group"/> has the state after <paramref name="index"/>.</summary>
    public void OnReplicaState(ulong server, ulong group, ulong index, Lease lease, ApplyResult? result, string how)
    {
        if (_states.TryGetValue((group, index), out var known))
        {
            if (known.Lease != lease)
            {
                Fail($"replicas disagree: after index {index} of r{group}, s{server} ({how}) has lease {Show(lease)} but s{known.Server} had {Show(known.Lease)}");
            }

            if (result is { } r && known.Result is { } kr && r != kr)
            {
                Fail($"replicas disagree: entry {index} of r{group} gave {r} on s{server} but {kr} on s{known.Server}");
            }

            if (known.Result is null && result is not null)
            {
                _states[(group, index)] = (lease, result, server);
            }
        }
        else
        {
            _states[(group, index)] = (lease, result, server);
        }

        var key = (server, group);
        if (_lastSeq.TryGetValue(key, out var last) && lease.Sequence < last)
        {
            Fail($"lease sequence of r{group} went back on s{server} from {last} to {lease.Sequence} ({how} of index {index})");
        }

        _lastSeq[key] = lease.Sequence;
        if (lease.Holder != 0)
        {
            Register(group, lease);
        }
    }

    private void Register(ulong group, Lease lease)
    {
        if (!_leases.TryGetValue(group, out var all))
        {
            all = [];
            _leases[group] = all;
        }

        if (all.TryGetValue(lease.Sequence, out var rec))
        {
            if (rec.Holder != lease.Holder || rec.Start != lease.Start)
            {
                Fail($"lease sequence {lease.Sequence} of r{group} names two leases: s{rec.Holder} from {rec.Start} and {Show(lease)}");
            }

            if (lease.Expiration <= rec.MaxExpiration)
            {
                return;
            }

            rec.MaxExpiration = lease.Expiration;
        }
        else
        {
            rec = new LeaseRecord(lease.Holder, lease.Start, lease.Expiration);
            all[lease.Sequence] = rec;
        }

        foreach (var (seq, other) in all)
        {
            if (seq != lease.Sequence && other.Holder != rec.Holder)
            {
                var (a, aSeq, b, bSeq) = seq < lease.Sequence ? (other, seq, rec, lease.Sequence) : (rec, lease.Sequence, other, seq);
                CheckOrder(group, a, aSeq, b, bSeq);
            }
        }
    }

    /// <summary>Lease <paramref name="a"/> precedes <paramref name="b"/> (different holders): a's window ends before b's starts.</summary>
    private void CheckOrder(ulong group, LeaseRecord a, ulong aSeq, LeaseRecord b, ulong bSeq)
    {
        var aEnd = a.MaxExpiration.Add(-maxOffset);
        if (aEnd > a.Start && b.MaxExpiration.Add(-maxOffset) > b.Start && aEnd > b.Start)
        {
            Fail($"two servers may serve r{group} at once: lease {aSeq} (s{a.Holder}) serves [{a.Start}, {aEnd}) and lease {bSeq} (s{b.Holder}) serves from {b.Start}");
        }

        if (a.MaxServed is { } served && served >= b.Start)
        {
            Fail($"s{a.Holder} served r{group} at {served} under lease {aSeq}, at or after the start {b.Start} of lease {bSeq} of s{b.Holder}");
        }
    }

    /// <summary>
    /// The write at <paramref name="index"/> of <paramref name="group"/> took effect (applied under <paramref name="lease"/>,
    /// the lease it was evaluated under): its timestamp must lie in that lease's serve window. Checked once per entry.
    /// </summary>
    public void OnWriteApplied(ulong server, ulong group, ulong index, Lease lease, HlcTimestamp ts, long now)
    {
        if (_writesChecked.Add((group, index)))
        {
            OnServe(lease.Holder, group, lease, ts, ts, now, $"the write at index {index} (applied first on s{server})", realTime: false);
        }
    }

    /// <summary>
    /// <paramref name="server"/> served a read or write of <paramref name="group"/> under its local <paramref name="lease"/>:
    /// checked at <paramref name="checkedAt"/>, timestamped <paramref name="ts"/>, at virtual time <paramref name="now"/>.
    /// </summary>
    public void OnServe(ulong server, ulong group, Lease lease, HlcTimestamp checkedAt, HlcTimestamp ts, long now, string what, bool realTime = true)
    {
        Serves++;
        if (!_leases.TryGetValue(group, out var all) || !all.TryGetValue(lease.Sequence, out var rec) || rec.Holder != server)
        {
            Fail($"s{server} served {what} of r{group} under lease {Show(lease)}, which never applied with it as holder");
            return;
        }

        var end = rec.MaxExpiration.Add(-maxOffset);
        if (checkedAt < rec.Start || checkedAt >= end)
        {
            Fail($"s{server} served {what} of r{group} at {checkedAt}, outside the window [{rec.Start}, {end}) of its lease {lease.Sequence} (max offset {maxOffset.TotalMilliseconds} ms)");
        }

        if (ts < rec.Start)
        {
            Fail($"s{server} timestamped {what} of r{group} at {ts}, before the start {rec.Start} of its lease {lease.Sequence}");
        }

        foreach (var (seq, later) in all)
        {
            if (seq > lease.Sequence && later.Holder != server && ts >= later.Start)
            {
                Fail($"s{server} timestamped {what} of r{group} at {ts} under lease {lease.Sequence}, at or after the start {later.Start} of the later lease {seq} of s{later.Holder}");
            }
        }

        if (rec.MaxServed is not { } m || ts > m)
        {
            rec.MaxServed = ts;
        }

        if (!realTime)
        {
            return;
        }

        if (_latestServe.TryGetValue(group, out var latest) && latest.Seq > lease.Sequence && latest.Holder != server)
        {
            Fail($"s{server} served {what} of r{group} under lease {lease.Sequence} at t={now / 1000.0:F1} ms, after s{latest.Holder} served under the later lease {latest.Seq} at t={latest.Time / 1000.0:F1} ms");
        }

        if (!_latestServe.TryGetValue(group, out latest) || lease.Sequence >= latest.Seq)
        {
            _latestServe[group] = (lease.Sequence, server, now);
        }
    }

    public static string Show(Lease l) => l.Holder == 0 ? $"none (seq {l.Sequence})" : $"s{l.Holder} [{l.Start}, {l.Expiration}) seq {l.Sequence}";

    private void Fail(string message)
    {
        if (enforce)
        {
            throw new SimViolation(message);
        }
    }

    private sealed class LeaseRecord(ulong holder, HlcTimestamp start, HlcTimestamp expiration)
    {
        public ulong Holder { get; } = holder;

        public HlcTimestamp Start { get; } = start;

        public HlcTimestamp MaxExpiration { get; set; } = expiration;

        public HlcTimestamp? MaxServed { get; set; }
    }
}
