namespace Canopy.Server;

/// <summary>
/// Per-key latches of one server: a request holds the latches of every key it touches from evaluation until its
/// effects are applied (writes) or read (reads), so overlapping requests are serialised and a read never sees a
/// write half-way (evaluated but not yet applied). Keys are taken in sorted order, so two requests never deadlock.
/// A latch is handed to waiters in FIFO order by its releaser; ownership is per acquisition (a cancelled waiter gives
/// up its place and never releases what it did not get). Waiting uses plain TaskCompletionSources, not SemaphoreSlim,
/// whose waiters resume on the thread pool even under a SynchronizationContext (found by the transaction simulation,
/// which runs this code on one thread).
/// </summary>
public sealed class KeyLatches
{
    private readonly Dictionary<string, Latch> _latches = new(StringComparer.Ordinal);
    private readonly object _sync = new();

    /// <summary>Acquires the latches of <paramref name="keys"/> (range id scoped); dispose to release.</summary>
    public async Task<IDisposable> AcquireAsync(ulong rangeId, IEnumerable<byte[]> keys, CancellationToken ct)
    {
        var names = keys.Select(k => $"{rangeId}/{Convert.ToHexString(k)}").Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToArray();
        var registered = new List<(string Name, Latch Latch)>(names.Length);
        var acquired = new List<Latch>(names.Length); // ownership is per acquisition, never a flag shared by waiters
        try
        {
            foreach (var name in names)
            {
                Latch latch;
                lock (_sync)
                {
                    if (!_latches.TryGetValue(name, out latch!))
                    {
                        latch = new Latch();
                        _latches[name] = latch;
                    }

                    latch.Users++;
                }

                registered.Add((name, latch));
                TaskCompletionSource? wait = null;
                lock (_sync)
                {
                    if (latch.Held)
                    {
                        wait = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                        latch.Waiters.Enqueue(wait);
                    }
                    else
                    {
                        latch.Held = true;
                    }
                }

                if (wait is not null)
                {
                    // Ownership is handed over by the releaser (FIFO). No ConfigureAwait(false): the transaction
                    // simulation runs this on its own single-threaded context.
                    // A cancelled waiter's TCS is cancelled, so the releaser skips it (TrySetResult fails).
                    using (ct.Register(() => wait.TrySetCanceled(ct)))
                    {
                        await wait.Task;
                    }
                }

                acquired.Add(latch);
            }
        }
        catch
        {
            Release(registered, acquired);
            throw;
        }

        return new Releaser(this, registered, acquired);
    }

    /// <summary>For diagnostics: the latches in use (name, users, free).</summary>
    internal string Describe()
    {
        lock (_sync)
        {
            return string.Join("; ", _latches.Select(kv => $"{kv.Key} users={kv.Value.Users} held={kv.Value.Held} waiting={kv.Value.Waiters.Count}"));
        }
    }

    private void Release(List<(string Name, Latch Latch)> registered, List<Latch> acquired)
    {
        lock (_sync)
        {
            foreach (var latch in acquired)
            {
                // Hand the latch to the next waiter that is still waiting (a cancelled one gave up its place).
                latch.Held = false;
                while (latch.Waiters.TryDequeue(out var next))
                {
                    if (next.TrySetResult())
                    {
                        latch.Held = true;
                        break;
                    }
                }
            }

            foreach (var (name, latch) in registered)
            {
                if (--latch.Users == 0)
                {
                    _latches.Remove(name);
                }
            }
        }
    }

    private sealed class Latch
    {
        public readonly Queue<TaskCompletionSource> Waiters = new();
        public bool Held;
        public int Users;
    }

    private sealed class Releaser(KeyLatches owner, List<(string, Latch)> registered, List<Latch> acquired) : IDisposable
    {
        private int _done;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _done, 1) == 0)
            {
                owner.Release(registered, acquired);
            }
        }
    }
}
