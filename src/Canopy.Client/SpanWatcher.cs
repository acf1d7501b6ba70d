// Watching key spans: the client side of change feeds
// ===================================================
//
// What it guarantees. WatchAsync(spans, from) yields batches of committed changes of the spans with timestamps above
// `from`, each batch carrying a resolved timestamp R: the batch holds every change with a timestamp in (previous R, R],
// sorted by (timestamp, key), each exactly once, and no later batch holds a change at or below R. So applying batches
// in order gives the spans' state at each R: a consistent cut, even across ranges and servers (a transaction's writes
// share one commit timestamp, so they arrive in the same batch).
//
// How. One poller per range the spans touch long-polls that range's leaseholder with the "rangefeed" RPC (see
// Canopy.Server/Feed/RangeFeedServer.cs): a registration from its resolved timestamp (a catch-up scan), then the
// feed's buffer after its cursor. Pollers put events into one pending set keyed by (timestamp, key) — a duplicate
// (the catch-up and the buffer overlap, a re-registration repeats what was pending) lands on the same entry — and
// report their resolved timestamps; the frontier is the minimum over pollers, and everything pending at or below it is
// emitted, in order, as one batch.
//
// Failures. A leaseholder that moves or dies: the poller's request is redirected or retried by the client's routing
// (other servers, range cache), and a cursor the new leaseholder does not know is answered FeedRestart: the poller
// registers again from its own resolved timestamp, so nothing between is missed and what repeats is deduplicated.
// While a range has no leaseholder the frontier stops (batches pause) and resumes after; nothing is lost. Resuming
// after a client restart: WatchAsync(spans, lastResolved). Final errors (bad request, internal) end the enumeration
// with a CanopyRpcException.
namespace Canopy.Client;

using System.Runtime.CompilerServices;
using Canopy.Rpc;

/// <summary>A committed change: the key, the commit timestamp, the new value (null: deleted).</summary>
public sealed record KeyChange(byte[] Key, CanopyTimestamp Timestamp, byte[]? Value);

/// <summary>The changes with timestamps in (previous <see cref="Resolved"/>, <see cref="Resolved"/>], in (timestamp, key) order.</summary>
public sealed record ChangeBatch(IReadOnlyList<KeyChange> Changes, CanopyTimestamp Resolved);

/// <summary>Settings of <see cref="CanopyClient.WatchAsync"/>.</summary>
public sealed record WatchOptions
{
    /// <summary>How long a poll waits at the leaseholder when there is nothing new (a resolved-timestamp heartbeat).</summary>
    public TimeSpan PollWait { get; init; } = TimeSpan.FromMilliseconds(50);

    /// <summary>Events per answer.</summary>
    public int PageSize { get; init; } = 5000;

    /// <summary>Emit a batch without changes when only the resolved timestamp advanced (at most this often).</summary>
    public TimeSpan HeartbeatInterval { get; init; } = TimeSpan.FromMilliseconds(100);

    /// <summary>Called when a poller hits a retryable problem (no leaseholder, a server down); for logs and tests.</summary>
    public Action<string>? OnRetry { get; init; }
}

public sealed partial class CanopyClient
{
    /// <summary>
    /// Streams the committed changes of <paramref name="spans"/> (each [start, end), null end = to the end of the key
    /// space) above <paramref name="from"/>, as consistent batches (see the file header). Ends only by cancellation or
    /// a final error.
    /// </summary>
    public async IAsyncEnumerable<ChangeBatch> WatchAsync(
        IReadOnlyList<(byte[] Start, byte[]? End)> spans,
        CanopyTimestamp from,
        WatchOptions? options = null,
        [EnumeratorCancellation] CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(spans);
        options ??= new WatchOptions();
        var merge = new WatchMerge(from);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var parts = await PartitionAsync(spans, stop.Token).ConfigureAwait(false);
        var pollers = parts.Select(p => merge.AddPoller()).ToList();
        var tasks = parts.Select((p, i) => Task.Run(() => PollAsync(p.Start, p.End, pollers[i], merge, options, stop.Token), stop.Token)).ToList();
        try
        {
            var lastEmit = DateTimeOffset.MinValue;
            while (true)
            {
                var wake = merge.Changed;
                if (merge.Failure is { } failure)
                {
                    throw failure;
                }

                var now = DateTimeOffset.UtcNow;
                var batch = merge.TakeBatch(emitEmpty: now - lastEmit >= options.HeartbeatInterval);
                if (batch is not null)
                {
                    lastEmit = now;
                    yield return batch;
                    continue;
                }

                var delay = Task.Delay(options.HeartbeatInterval, stop.Token);
                await Task.WhenAny(wake, delay).ConfigureAwait(false);
                stop.Token.ThrowIfCancellationRequested();
            }
        }
        finally
        {
            await stop.CancelAsync().ConfigureAwait(false);
            try
            {
                await Task.WhenAll(tasks).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or CanopyException)
            {
                // the pollers stop with the enumeration
            }
        }
    }

    /// <summary>The spans cut at range boundaries (one poller per piece).</summary>
    private async Task<List<(byte[] Start, byte[]? End)>> PartitionAsync(IReadOnlyList<(byte[] Start, byte[]? End)> spans, CancellationToken ct)
    {
        var ranges = await ListRangesAsync(ct).ConfigureAwait(false);
        var parts = new List<(byte[] Start, byte[]? End)>();
        foreach (var (start, end) in spans)
        {
            var lo = KeyOrder.Compare(start, CanopyKeys.UserKeyspaceStart) < 0 ? CanopyKeys.UserKeyspaceStart.ToArray() : start;
            foreach (var r in ranges.OrderBy(r => Convert.ToHexString(r.StartKey), StringComparer.Ordinal))
            {
                var rs = r.StartKey;
                var re = r.EndKey;
                var s = KeyOrder.Compare(lo, rs) > 0 ? lo : rs;
                var e = MinEnd(end, re);
                if (e is not null && KeyOrder.Compare(s, e) >= 0)
                {
                    continue;
                }

                if (re is not null && KeyOrder.Compare(lo, re) >= 0)
                {
                    continue;
                }

                parts.Add((s, e));
            }
        }

        if (parts.Count == 0)
        {
            throw new ArgumentException("the spans to watch are empty");
        }

        return parts;
    }

    private async Task PollAsync(byte[] start, byte[]? end, WatchMerge.Poller poller, WatchMerge merge, WatchOptions options, CancellationToken ct)
    {
        string? cursor = null;
        var failures = 0;
        while (!ct.IsCancellationRequested)
        {
            var args = new Dictionary<string, string> { ["wait_ms"] = ((int)options.PollWait.TotalMilliseconds).ToString(System.Globalization.CultureInfo.InvariantCulture) };
            if (cursor is not null)
            {
                args["cursor"] = cursor;
            }

            if (merge.Want is { } want)
            {
                args["want"] = want.ToString();
            }

            var request = new RpcRequest
            {
                Method = RpcMethods.RangeFeed,
                Key = start,
                EndKey = end,
                FromTimestamp = cursor is null ? poller.Resolved.ToString() : null,
                Args = args,
                Limit = options.PageSize,
            };
            RpcResponse response;
            try
            {
                response = await ExecuteAsync(request, start, null, ct, rawErrors: true).ConfigureAwait(false);
            }
            catch (CanopyUnavailableException ex)
            {
                options.OnRetry?.Invoke($"watch {Describe(start)}: {ex.Message}");
                await BackoffAsync(failures++, ct).ConfigureAwait(false);
                continue;
            }
            catch (CanopyRpcException ex)
            {
                // The routing loop throws the codes it does not retry itself (FeedRestart among them).
                response = RpcResponse.Fail(ex.Code, ex.Message);
            }
            catch (Exception ex) when (!ct.IsCancellationRequested && ex is not OperationCanceledException)
            {
                merge.Fail(ex); // never die silently: a stopped poller would stop the whole watch's frontier
                return;
            }

            if (response.Error is { } error)
            {
                switch (error.Code)
                {
                    case RpcErrorCode.FeedRestart:
                    case RpcErrorCode.NotLeaseholder:
                    case RpcErrorCode.RangeNotFound:
                    case RpcErrorCode.Unavailable:
                    case RpcErrorCode.NotInitialized:
                    case RpcErrorCode.Refused:
                    case RpcErrorCode.Ambiguous:
                        options.OnRetry?.Invoke($"watch {Describe(start)}: {error.Code}: {error.Message}");
                        cursor = null; // register again from the resolved timestamp
                        await BackoffAsync(failures++, ct).ConfigureAwait(false);
                        continue;
                    default:
                        merge.Fail(new CanopyRpcException(error.Code, $"watching {Describe(start)}: {error.Message}"));
                        return;
                }
            }

            failures = 0;
            cursor = response.Info is { } info && info.TryGetValue("cursor", out var c) ? c : null;
            CanopyTimestamp? resolved = CanopyTimestamp.TryParse(response.Timestamp, out var r) ? r : null;
            merge.Add(poller, response.Events ?? [], resolved);
        }
    }

    private static string Describe(byte[] key) => key.Length == 0 ? "(start)" : Convert.ToHexString(key, 0, Math.Min(key.Length, 16));
}

/// <summary>The merge of the pollers of one watch (see SpanWatcher.cs).</summary>
internal sealed class WatchMerge(CanopyTimestamp from)
{
    private readonly object _gate = new();
    private readonly List<Poller> _pollers = [];
    private readonly SortedDictionary<(CanopyTimestamp Ts, byte[] Key), byte[]?> _pending = new(PendingOrder.Instance);
    private CanopyTimestamp _emitted = from;
    private CanopyTimestamp? _newestPending; // kept, not searched for: every poller asks for it on every poll
    private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private Exception? _failure;

    internal sealed class Poller(CanopyTimestamp from)
    {
        public CanopyTimestamp Resolved { get; set; } = from;
    }

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

    public Exception? Failure
    {
        get
        {
            lock (_gate)
            {
                return _failure;
            }
        }
    }

    /// <summary>The newest pending change: pollers ask their leaseholder to answer once it is resolved.</summary>
    public CanopyTimestamp? Want
    {
        get
        {
            lock (_gate)
            {
                return _newestPending;
            }
        }
    }

    public Poller AddPoller()
    {
        lock (_gate)
        {
            var p = new Poller(_emitted);
            _pollers.Add(p);
            return p;
        }
    }

    public void Add(Poller poller, IReadOnlyList<KvEvent> events, CanopyTimestamp? resolved)
    {
        TaskCompletionSource signal;
        lock (_gate)
        {
            foreach (var e in events)
            {
                if (e.Key is null || !CanopyTimestamp.TryParse(e.Ts, out var ts) || ts <= _emitted)
                {
                    continue; // already emitted (or at/below the start): a duplicate
                }

                _pending[(ts, e.Key)] = e.Value;
                if (_newestPending is not { } newest || ts > newest)
                {
                    _newestPending = ts;
                }
            }

            if (resolved is { } r && r > poller.Resolved)
            {
                poller.Resolved = r;
            }

            signal = _changed;
            _changed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        }

        signal.TrySetResult();
    }

    public void Fail(Exception ex)
    {
        TaskCompletionSource signal;
        lock (_gate)
        {
            _failure ??= ex;
            signal = _changed;
            _changed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        }

        signal.TrySetResult();
    }

    /// <summary>The next batch, if the frontier advanced (and it holds changes, or <paramref name="emitEmpty"/>).</summary>
    public ChangeBatch? TakeBatch(bool emitEmpty)
    {
        lock (_gate)
        {
            var frontier = _pollers.Min(p => p.Resolved);
            if (frontier <= _emitted)
            {
                return null;
            }

            var changes = new List<KeyChange>();
            while (_pending.Count > 0)
            {
                var first = _pending.First();
                if (first.Key.Ts > frontier)
                {
                    break;
                }

                changes.Add(new KeyChange(first.Key.Key, first.Key.Ts, first.Value));
                _pending.Remove(first.Key);
            }

            if (changes.Count == 0 && !emitEmpty)
            {
                return null;
            }

            if (_pending.Count == 0)
            {
                _newestPending = null; // what is left is newer than what was taken, so the newest only changes when none is left
            }

            _emitted = frontier;
            return new ChangeBatch(changes, frontier);
        }
    }

    private sealed class PendingOrder : IComparer<(CanopyTimestamp Ts, byte[] Key)>
    {
        public static readonly PendingOrder Instance = new();

        public int Compare((CanopyTimestamp Ts, byte[] Key) x, (CanopyTimestamp Ts, byte[] Key) y)
        {
            var c = x.Ts.CompareTo(y.Ts);
            return c != 0 ? c : KeyOrder.Compare(x.Key, y.Key);
        }
    }
}
