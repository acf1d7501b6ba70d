namespace Canopy.Txn;

/// <summary>
/// At a transaction record's leaseholder: who waits on which transaction, for the wait queue and distributed deadlock
/// detection (txn-pitfalls 12). In memory only; a lease move loses it and waiters simply register again.
///
/// Detection: a pusher P that must wait on E registers at E's record: deps(E) += {P} ∪ deps(P), where P brings deps(P)
/// from its own record's leaseholder. Dependencies flow along waiting chains with every re-push (each waiter re-pushes
/// at least every <see cref="WaitRound"/>), so in a cycle P → E → … → P some push eventually finds its pushee among
/// its own dependents: a deadlock, broken by aborting the member of lower priority. Entries expire unless refreshed,
/// so a waiter that stopped waiting stops counting.
/// </summary>
public sealed class TxnWaitRegistry
{
    /// <summary>How long one push waits at the record before the pusher re-pushes (and refreshes its deps).</summary>
    public static readonly TimeSpan WaitRound = TimeSpan.FromMilliseconds(100);

    /// <summary>An unrefreshed dependency is forgotten after this (a few rounds).</summary>
    private static readonly TimeSpan DepLifetime = TimeSpan.FromMilliseconds(600);

    private readonly object _gate = new();
    private readonly TimeProvider _time;
    private readonly Dictionary<Guid, Dictionary<Guid, long>> _deps = [];

    public TxnWaitRegistry(TimeProvider? time = null) => _time = time ?? TimeProvider.System;

    private long NowMs => (long)_time.GetElapsedTime(0).TotalMilliseconds;
    private readonly Dictionary<Guid, TaskCompletionSource> _changed = [];

    /// <summary>Records that <paramref name="pusher"/> (and everything waiting on it) waits on <paramref name="pushee"/>.</summary>
    public void AddWaiter(Guid pushee, Guid pusher, IEnumerable<Guid> pusherDeps)
    {
        var expires = NowMs + (long)DepLifetime.TotalMilliseconds;
        lock (_gate)
        {
            if (!_deps.TryGetValue(pushee, out var set))
            {
                set = [];
                _deps[pushee] = set;
            }

            set[pusher] = expires;
            foreach (var d in pusherDeps)
            {
                set[d] = expires;
            }
        }
    }

    /// <summary>Every transaction known to wait (directly or through others) on <paramref name="txn"/>.</summary>
    public IReadOnlyList<Guid> Dependents(Guid txn)
    {
        var now = NowMs;
        lock (_gate)
        {
            if (!_deps.TryGetValue(txn, out var set))
            {
                return [];
            }

            foreach (var k in set.Where(kv => kv.Value < now).Select(kv => kv.Key).ToArray())
            {
                set.Remove(k);
            }

            if (set.Count == 0)
            {
                _deps.Remove(txn);
            }

            return set.Keys.ToArray();
        }
    }

    /// <summary>A task that completes when <paramref name="txn"/>'s record changes here (see <see cref="Notify"/>).</summary>
    public Task Changed(Guid txn)
    {
        lock (_gate)
        {
            if (!_changed.TryGetValue(txn, out var tcs))
            {
                // Continuations run where Notify is called (cheap: a waiter's push answers "wait"). Not asynchronously:
                // that would hop to the thread pool, out of the transaction simulation's single thread.
                tcs = new TaskCompletionSource();
                _changed[txn] = tcs;
            }

            return tcs.Task;
        }
    }

    /// <summary>Wakes the waiters of <paramref name="txn"/> (its record changed); forgets its dependents when final.</summary>
    public void Notify(Guid txn, bool final)
    {
        TaskCompletionSource? tcs;
        lock (_gate)
        {
            _changed.Remove(txn, out tcs);
            if (final)
            {
                _deps.Remove(txn);
            }
        }

        tcs?.TrySetResult();
    }
}
