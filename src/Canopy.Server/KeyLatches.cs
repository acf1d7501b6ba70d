namespace Canopy.Server;

/// <summary>
/// Per-key latches of one server: a request holds the latches of every key it touches from evaluation until its
/// effects are applied (writes) or read (reads), so overlapping requests are serialised and a read never sees a
/// write half-way (evaluated but not yet applied). Keys are taken in sorted order, so two requests never deadlock.
/// </summary>
public sealed class KeyLatches
{
    private readonly Dictionary<string, Latch> _latches = new(StringComparer.Ordinal);
    private readonly object _sync = new();

    /// <summary>Acquires the latches of <paramref name="keys"/> (range id scoped); dispose to release.</summary>
    public async Task<IDisposable> AcquireAsync(ulong rangeId, IEnumerable<byte[]> keys, CancellationToken ct)
    {
        var names = keys.Select(k => $"{rangeId}/{Convert.ToHexString(k)}").Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToArray();
        var held = new List<(string Name, Latch Latch)>(names.Length);
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

                held.Add((name, latch));
                await latch.Gate.WaitAsync(ct); // no ConfigureAwait(false): the transaction simulation runs this on its own context
                latch.Held = true;
            }
        }
        catch
        {
            Release(held);
            throw;
        }

        return new Releaser(this, held);
    }

    private void Release(List<(string Name, Latch Latch)> held)
    {
        foreach (var (name, latch) in held)
        {
            if (latch.Held)
            {
                latch.Held = false;
                latch.Gate.Release();
            }

            lock (_sync)
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
        public readonly SemaphoreSlim Gate = new(1, 1);
        public int Users;
        public bool Held;
    }

    private sealed class Releaser(KeyLatches owner, List<(string, Latch)> held) : IDisposable
    {
        private int _done;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _done, 1) == 0)
            {
                owner.Release(held);
            }
        }
    }
}
