namespace Canopy.Tree;

/// <summary>
/// A session whose lease is renewed in the background: one write (the session record) every third of the lease,
/// whatever the session owns. Failed renewals are retried sooner; <see cref="LastError"/> tells the last one.
/// Disposing stops the heartbeat (the lease then lapses by itself); <see cref="CloseAsync"/> also deletes the session
/// so its nodes may be taken at once.
/// </summary>
public sealed class OwnerSession : IAsyncDisposable
{
    private readonly SceneTree _tree;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;
    private SessionInfo _current;
    private Exception? _lastError;

    private OwnerSession(SceneTree tree, SessionInfo info)
    {
        _tree = tree;
        _current = info;
        _loop = Task.Run(HeartbeatAsync);
    }

    public string Id => _current.Id;

    /// <summary>The lease as last written.</summary>
    public SessionInfo Current => Volatile.Read(ref _current);

    /// <summary>The last renewal's failure, or null when the last one succeeded.</summary>
    public Exception? LastError => Volatile.Read(ref _lastError);

    /// <summary>How many renewals committed.</summary>
    public int Renewals { get; private set; }

    /// <summary>The lease has not expired by the local clock (others may take its nodes only after expiry plus the max clock offset).</summary>
    public bool IsLive => _tree.NowNanos() < Current.ExpiresAtNanos;

    internal static async Task<OwnerSession> StartAsync(SceneTree tree, string id, TimeSpan? lease, CancellationToken ct)
    {
        var info = await tree.OpenSessionAsync(id, lease, ct).ConfigureAwait(false);
        return new OwnerSession(tree, info);
    }

    private async Task HeartbeatAsync()
    {
        var interval = Current.Lease / 3;
        var delay = interval;
        while (!_stop.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(delay, _tree.Options.Time, _stop.Token).ConfigureAwait(false);
                var info = await _tree.RenewSessionAsync(Id, _stop.Token).ConfigureAwait(false);
                Volatile.Write(ref _current, info);
                Volatile.Write(ref _lastError, null);
                Renewals++;
                delay = interval;
            }
            catch (OperationCanceledException) when (_stop.IsCancellationRequested)
            {
                return;
            }
            catch (SessionNotFoundException e)
            {
                Volatile.Write(ref _lastError, e); // closed elsewhere: nothing left to renew
                return;
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                Volatile.Write(ref _lastError, e);
                delay = interval / 4;
            }
        }
    }

    /// <summary>Stops the heartbeat and deletes the session record.</summary>
    public async Task CloseAsync(CancellationToken ct = default)
    {
        await StopAsync().ConfigureAwait(false);
        await _tree.CloseSessionAsync(Id, ct).ConfigureAwait(false);
    }

    private async Task StopAsync()
    {
        if (!_stop.IsCancellationRequested)
        {
            await _stop.CancelAsync().ConfigureAwait(false);
        }

        await _loop.ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync().ConfigureAwait(false);
        _stop.Dispose();
    }
}
