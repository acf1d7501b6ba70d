// AsyncSignal: an async event count for one waiter (a peer's send loop). Guarantees: a Set() that happens after the
// waiter read Version is never lost — WaitAsync(seen) completes at once if anything was signalled since; waiting
// allocates at most one TaskCompletionSource; continuations never run inline on the thread calling Set().
namespace Canopy.Transport;

/// <summary>An event count: a single waiter sleeps until the version moves past what it last saw. No lost wake-ups.</summary>
internal sealed class AsyncSignal
{
    private readonly Lock _lock = new();
    private long _version;
    private TaskCompletionSource? _waiter;

    public long Version
    {
        get
        {
            lock (_lock)
            {
                return _version;
            }
        }
    }

    public void Set()
    {
        TaskCompletionSource? waiter;
        lock (_lock)
        {
            _version++;
            waiter = _waiter;
            _waiter = null;
        }

        waiter?.TrySetResult();
    }

    /// <summary>Completes once <see cref="Version"/> differs from <paramref name="seen"/>.</summary>
    public Task WaitAsync(long seen)
    {
        lock (_lock)
        {
            if (_version != seen)
            {
                return Task.CompletedTask;
            }

            _waiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            return _waiter.Task;
        }
    }
}
