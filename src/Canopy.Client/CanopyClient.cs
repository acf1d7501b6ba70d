// The .NET client of a Canopy cluster.
//
// Routing
// - A range cache (RangeCache: sorted by start key, immutable snapshots) fed by every response's `range`, by
//   `range_lookup` on a miss and by `list_ranges`; a node map (node id → address) fed by `node_status`, by ranges that
//   carry a leaseholder address and by NotLeaseholder hints.
// - A key's request goes to the cached leaseholder's address; with no (usable) leaseholder, to any server (round
//   robin over the seeds and the servers learned, skipping suspect ones).
//
// Retries (all within one deadline per call, CanopyClientOptions.RequestTimeout, and the caller's token)
// - NotLeaseholder: cache the hint (node id and/or address) and retry at once at the hinted server; without a usable
//   hint (none, unknown, suspect, or the server that just answered) back off and try another server.
// - RangeNotFound: drop the cache entry, look the range up at another server, retry.
// - Unavailable: back off (exponential from MinBackoff to MaxBackoff, with jitter) and retry.
// - Connection refused / lost, no answer within AttemptTimeout: the server is suspect for SuspectDuration, cached
//   leaseholders on it are forgotten, the next attempt goes elsewhere.
// - Ambiguous: surfaced as CanopyAmbiguousException. Every other code: CanopyRpcException at once.
// Plain puts, deletes and batches are idempotent, so they are retried like reads (a retried write may land after a
// concurrent write by someone else; for plain KV that is indistinguishable from the first attempt landing late).
namespace Canopy.Client;

using System.Collections.Concurrent;
using System.Globalization;
using Canopy.Rpc;

/// <summary>
/// A connection to a Canopy cluster. Thread-safe: one instance serves any number of concurrent callers.
/// Create with <see cref="ConnectAsync"/>; dispose to close the connections.
/// </summary>
public sealed partial class CanopyClient : IAsyncDisposable
{
    private const int RedirectsBeforeBackoff = 3;
    private const int UnavailableBeforeMovingOn = 3;
    private static readonly TimeSpan NodeRefreshInterval = TimeSpan.FromSeconds(1);

    private readonly CanopyClientOptions _options;
    private readonly ServerPool _pool;
    private readonly RangeCache _ranges = new();
    private readonly ConcurrentDictionary<ulong, string> _nodes = new();
    private readonly CancellationTokenSource _disposing = new();
    private readonly object _nodesGate = new();
    private Task? _nodesRefresh;
    private long _nodesRefreshedAt; // Environment.TickCount64 of the last refresh; 0: never
    private int _disposed;

    private CanopyClient(IReadOnlyList<string> seeds, CanopyClientOptions options)
    {
        _options = options;
        _pool = new ServerPool(seeds, options.SuspectDuration);
    }

    /// <summary>The options this client runs with.</summary>
    public CanopyClientOptions Options => _options;

    /// <summary>The servers known: the addresses given, then those learned from the cluster.</summary>
    public IReadOnlyList<string> KnownServers => _pool.Known;

    /// <summary>The cached ranges (a snapshot, sorted by start key).</summary>
    public IReadOnlyList<RangeInfo> CachedRanges => _ranges.Snapshot;

    /// <summary>
    /// Creates a client for the cluster reachable at <paramref name="addresses"/> (HOST:PORT each) and checks that at
    /// least one of them answers a ping (trying them in order, starting the next one when the previous has failed or
    /// is slow). Connections to the other servers open when first needed.
    /// </summary>
    /// <exception cref="ArgumentException">No address, or one is not HOST:PORT.</exception>
    /// <exception cref="CanopyUnavailableException">None answered; the message says what was tried and why it failed.</exception>
    public static async Task<CanopyClient> ConnectAsync(IReadOnlyList<string> addresses, CanopyClientOptions? options = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(addresses);
        options ??= new CanopyClientOptions();
        options.Validate();
        var seeds = new List<string>(addresses.Count);
        foreach (var raw in addresses)
        {
            var a = raw?.Trim() ?? string.Empty;
            if (ParseAddressError(a) is { } why)
            {
                throw new ArgumentException(why);
            }

            if (!seeds.Contains(a, StringComparer.Ordinal))
            {
                seeds.Add(a);
            }
        }

        if (seeds.Count == 0)
        {
            throw new ArgumentException("no server address given (expected HOST:PORT)");
        }

        var client = new CanopyClient(seeds, options);
        try
        {
            await client.ProbeAsync(seeds, ct).ConfigureAwait(false);
            return client;
        }
        catch
        {
            await client.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    // ---------------------------------------------------------------- KV

    /// <summary>The value of <paramref name="key"/>, or null when there is none.</summary>
    public async Task<byte[]?> GetAsync(byte[] key, CancellationToken ct = default)
    {
        CheckKey(key);
        var response = await ExecuteAsync(new RpcRequest { Method = RpcMethods.Get, Key = key }, key, null, ct).ConfigureAwait(false);
        return response.Found || response.Value is not null ? response.Value ?? [] : null;
    }

    /// <summary>Sets <paramref name="key"/> to <paramref name="value"/>.</summary>
    /// <exception cref="CanopyAmbiguousException">The server cannot tell whether the write happened.</exception>
    public async Task PutAsync(byte[] key, byte[] value, CancellationToken ct = default)
    {
        CheckKey(key);
        CheckValue(value);
        await ExecuteAsync(new RpcRequest { Method = RpcMethods.Put, Key = key, Value = value }, key, null, ct).ConfigureAwait(false);
    }

    /// <summary>Deletes <paramref name="key"/> (no error when it does not exist).</summary>
    public async Task DeleteAsync(byte[] key, CancellationToken ct = default)
    {
        CheckKey(key);
        await ExecuteAsync(new RpcRequest { Method = RpcMethods.Delete, Key = key }, key, null, ct).ConfigureAwait(false);
    }

    /// <summary>
    /// The pairs with <paramref name="start"/> &lt;= key &lt; <paramref name="end"/> (null: to the end of the key
    /// space) in key order, at most <paramref name="limit"/> of them (0 or less: all). Crosses ranges: each range is
    /// scanned in turn (pages of <see cref="CanopyClientOptions.ScanPageSize"/>); the deadline applies to each
    /// request, not to the whole scan. The scan is not a snapshot across requests. Starts no lower than the user key
    /// space (keys starting with 0x00 are the system's).
    /// </summary>
    public Task<IReadOnlyList<KvPair>> ScanAsync(byte[] start, byte[]? end, int limit = 0, CancellationToken ct = default) =>
        ScanCoreAsync(start, end, limit, null, ct);

    /// <summary>
    /// Like <see cref="ScanAsync(byte[], byte[], int, CancellationToken)"/>, but every page reads at timestamp
    /// <paramref name="at"/> (a time the cluster has reached, e.g. from <see cref="NowAsync"/> or a watch's resolved
    /// timestamp): the pages together are one consistent snapshot at <paramref name="at"/>, whatever ranges they cross.
    /// </summary>
    public Task<IReadOnlyList<KvPair>> ScanAtAsync(byte[] start, byte[]? end, CanopyTimestamp at, int limit = 0, CancellationToken ct = default) =>
        ScanCoreAsync(start, end, limit, at.ToString(), ct);

    /// <summary>The cluster's current time as one server's hybrid clock reads it.</summary>
    public async Task<CanopyTimestamp> NowAsync(CancellationToken ct = default)
    {
        var r = await ExecuteAsync(new RpcRequest { Method = RpcMethods.Ping }, null, null, ct).ConfigureAwait(false);
        return CanopyTimestamp.TryParse(r.Timestamp, out var ts) ? ts : throw new CanopyRpcException(RpcErrorCode.Internal, "the server's ping carried no timestamp");
    }

    private async Task<IReadOnlyList<KvPair>> ScanCoreAsync(byte[] start, byte[]? end, int limit, string? at, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(start);
        if (start.Length > CanopyKeys.MaxKeyBytes || end?.Length > CanopyKeys.MaxKeyBytes)
        {
            throw new ArgumentException($"scan bounds must be at most {CanopyKeys.MaxKeyBytes} bytes");
        }

        var cursor = KeyOrder.Compare(start, CanopyKeys.UserKeyspaceStart) < 0 ? CanopyKeys.UserKeyspaceStart.ToArray() : start;
        var rows = new List<KvPair>();
        byte[]? lastKey = null;
        while (limit <= 0 || rows.Count < limit)
        {
            if (end is not null && KeyOrder.Compare(cursor, end) >= 0)
            {
                break;
            }

            var want = limit <= 0 ? _options.ScanPageSize : Math.Min(_options.ScanPageSize, limit - rows.Count);
            var request = new RpcRequest { Method = RpcMethods.Scan, Key = cursor, EndKey = end, Limit = want, Timestamp = at };
            var sentEnd = end;

            // Each attempt asks for no more than the range it is routed to: the server serves one range.
            var response = await ExecuteAsync(
                request,
                cursor,
                range =>
                {
                    sentEnd = MinEnd(end, range?.EndKey);
                    return ReferenceEquals(sentEnd, end) ? request : request with { EndKey = sentEnd };
                },
                ct).ConfigureAwait(false);

            var page = response.Rows ?? [];
            var added = 0;
            foreach (var row in page)
            {
                // Defensive: keep only rows in the asked span, ascending, never twice.
                if (row.Key is null || KeyOrder.Compare(row.Key, cursor) < 0 ||
                    (sentEnd is not null && KeyOrder.Compare(row.Key, sentEnd) >= 0) ||
                    (lastKey is not null && KeyOrder.Compare(row.Key, lastKey) <= 0))
                {
                    continue;
                }

                rows.Add(row.Value is null ? row with { Value = [] } : row);
                lastKey = row.Key;
                added++;
                if (limit > 0 && rows.Count >= limit)
                {
                    break;
                }
            }

            if (page.Count >= want && added > 0 && lastKey is not null)
            {
                // A full page: there may be more in this range.
                cursor = [.. lastKey, 0x00];
                continue;
            }

            // The range is done up to where this request reached (the served range may end before what was asked).
            var reached = sentEnd;
            if (response.Range is { } served && RangeCache.IsWellFormed(served) && served.Contains(cursor))
            {
                reached = MinEnd(reached, served.EndKey);
            }

            if (reached is null)
            {
                break;
            }

            cursor = reached;
        }

        return rows;
    }

    /// <summary>Applies puts (Value set) and deletes (Value null) atomically. All keys must be in one range.</summary>
    /// <exception cref="ArgumentException">The keys span ranges ("batch spans ranges r2 and r3"), or a key is invalid.</exception>
    /// <exception cref="CanopyAmbiguousException">The server cannot tell whether the batch happened.</exception>
    public async Task BatchAsync(IReadOnlyList<KvWrite> writes, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(writes);
        if (writes.Count == 0)
        {
            throw new ArgumentException("a batch needs at least one write");
        }

        foreach (var w in writes)
        {
            ArgumentNullException.ThrowIfNull(w);
            CheckKey(w.Key);
            if (w.Value is not null)
            {
                CheckValue(w.Value);
            }
        }

        // Know the range of every key first, to refuse a batch across ranges before sending anything.
        RangeInfo? first = null;
        foreach (var w in writes)
        {
            var r = _ranges.Find(w.Key) ?? await LookupAsync(w.Key, null, ct).ConfigureAwait(false);
            if (r is null)
            {
                continue;
            }

            if (first is null)
            {
                first = r;
            }
            else if (r.RangeId != first.RangeId)
            {
                throw new ArgumentException($"batch spans ranges r{first.RangeId} and r{r.RangeId}");
            }
        }

        var request = new RpcRequest { Method = RpcMethods.Batch, Key = writes[0].Key, Writes = writes };
        await ExecuteAsync(
            request,
            writes[0].Key,
            range =>
            {
                // The cache may have changed (a split) since the check above.
                if (range is not null)
                {
                    foreach (var w in writes)
                    {
                        if (!range.Contains(w.Key))
                        {
                            var other = _ranges.Find(w.Key);
                            throw new ArgumentException($"batch spans ranges r{range.RangeId} and {(other is null ? "another range" : "r" + other.RangeId.ToString(CultureInfo.InvariantCulture))}");
                        }
                    }
                }

                return request;
            },
            ct).ConfigureAwait(false);
    }

    // ---------------------------------------------------------------- admin

    /// <summary>The ranges as one server sees them (also refreshes the range cache).</summary>
    public async Task<IReadOnlyList<RangeInfo>> ListRangesAsync(CancellationToken ct = default)
    {
        var response = await ExecuteAsync(new RpcRequest { Method = RpcMethods.ListRanges }, null, null, ct).ConfigureAwait(false);
        var ranges = response.Ranges ?? [];
        foreach (var r in ranges)
        {
            Learn(r);
        }

        return ranges;
    }

    /// <summary>The cluster's members as one server sees them (also refreshes the node address map).</summary>
    public async Task<IReadOnlyList<NodeInfo>> NodeStatusAsync(CancellationToken ct = default)
    {
        var response = await ExecuteAsync(new RpcRequest { Method = RpcMethods.NodeStatus }, null, null, ct).ConfigureAwait(false);
        var nodes = response.Nodes ?? [];
        LearnNodes(nodes);
        return nodes;
    }

    /// <summary>
    /// Initialises the cluster. Throws <see cref="CanopyRpcException"/> with <see cref="RpcErrorCode.AlreadyInitialized"/>
    /// when it was already — unless an earlier attempt of this same call may have reached a server (its answer was
    /// lost): then AlreadyInitialized most likely reports that attempt's success, and the call returns normally.
    /// </summary>
    public async Task InitAsync(CancellationToken ct = default) =>
        await ExecuteAsync(new RpcRequest { Method = RpcMethods.Init }, null, null, ct, initSemantics: true).ConfigureAwait(false);

    /// <summary>
    /// Sends <paramref name="request"/> to any server (following NotLeaseholder hints, failing over and retrying like
    /// the other calls) and returns the successful response; errors are thrown as by the other calls.
    /// </summary>
    // ---------------------------------------------------------------- transactions

    /// <summary>Begins a transaction coordinated by one of the servers (the gateway).</summary>
    public async Task<CanopyTransaction> BeginTransactionAsync(TransactionOptions? options = null, CancellationToken ct = default)
    {
        options ??= new TransactionOptions();
        var args = new Dictionary<string, string>
        {
            ["parallel_commits"] = options.ParallelCommits ? "true" : "false",
            ["one_phase"] = options.OnePhase ? "true" : "false",
            ["pipeline"] = options.PipelineWrites ? "true" : "false",
            ["priority"] = options.Priority switch
            {
                TransactionPriority.High => "high",
                TransactionPriority.Low => "low",
                _ => "normal",
            },
        };
        string? lastError = null;
        for (var i = 0; i < Math.Max(3, _pool.Known.Count); i++)
        {
            var gateway = _pool.PickAny(null);
            try
            {
                var r = await CallServerAsync(gateway, new RpcRequest { Method = RpcMethods.TxnBegin, Args = args }, _options.RequestTimeout, ct).ConfigureAwait(false);
                if (r.Error is null && r.Info?.GetValueOrDefault("txn_id") is { } id)
                {
                    return new CanopyTransaction(this, gateway, id, options, r.Timestamp);
                }

                lastError = r.Error?.Message ?? "no transaction id in the answer";
            }
            catch (CanopyUnavailableException e)
            {
                lastError = e.Message;
            }
        }

        throw new CanopyUnavailableException($"could not begin a transaction: {lastError}");
    }

    /// <summary>
    /// Runs <paramref name="body"/> in a transaction and commits it, running it again (in a new transaction) after a
    /// retryable abort, up to <see cref="TransactionOptions.MaxAttempts"/> times. Returns the final outcome; an
    /// ambiguous one is never retried. An exception from the body rolls back and propagates.
    /// </summary>
    public async Task<TransactionResult> RunTransactionAsync(Func<CanopyTransaction, Task> body, TransactionOptions? options = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(body);
        options ??= new TransactionOptions();
        TransactionResult? last = null;
        for (var attempt = 1; attempt <= options.MaxAttempts; attempt++)
        {
            ct.ThrowIfCancellationRequested();
            await using var txn = await BeginTransactionAsync(options, ct).ConfigureAwait(false);
            try
            {
                await body(txn).ConfigureAwait(false);
                last = await txn.CommitAsync(ct).ConfigureAwait(false) with { Attempts = attempt };
            }
            catch (CanopyTransactionAbortedException e)
            {
                last = new TransactionResult(TransactionOutcome.Aborted, e.Message, null, attempt, Retryable: true);
            }

            if (last.Outcome != TransactionOutcome.Aborted || !last.Retryable)
            {
                return last;
            }

            await BackoffAsync(Math.Min(attempt, 5), ct).ConfigureAwait(false);
        }

        return last!;
    }

    /// <summary>Calls one given server (no routing); throws <see cref="CanopyUnavailableException"/> if it cannot be reached or does not answer in time.</summary>
    internal async Task<RpcResponse> CallServerAsync(string address, RpcRequest request, TimeSpan timeout, CancellationToken ct)
    {
        try
        {
            var rpc = await _pool.ConnectAsync(address, Min(_options.ConnectTimeout, timeout), ct).ConfigureAwait(false);
            return await rpc.CallAsync(request, timeout, ct).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is RpcConnectionException or TimeoutException)
        {
            OnServerFailed(address);
            throw new CanopyUnavailableException($"{address}: {ex.Message}", ex);
        }
    }

    /// <summary>
    /// Sends <paramref name="request"/> to the leaseholder of <paramref name="routeKey"/>'s range, following redirects
    /// and retrying routing errors within the request deadline; every other answer (success or a final error:
    /// TxnAborted, ConditionFailed, Ambiguous, BadRequest, Internal) is returned as it came. Used by the transaction
    /// coordinator, whose requests are idempotent (a retry after a lost answer is safe).
    /// </summary>
    /// <exception cref="CanopyUnavailableException">No leaseholder answered within the deadline.</exception>
    public Task<RpcResponse> SendToRangeAsync(RpcRequest request, byte[] routeKey, CancellationToken ct = default) =>
        ExecuteAsync(request, routeKey, null, ct, rawErrors: true);

    public Task<RpcResponse> CallAnyAsync(RpcRequest request, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        return ExecuteAsync(request, null, null, ct);
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        try
        {
            await _disposing.CancelAsync().ConfigureAwait(false);
        }
        finally
        {
            await _pool.DisposeAsync().ConfigureAwait(false);
            _disposing.Dispose();
        }
    }

    // ---------------------------------------------------------------- the retry loop

    private async Task<RpcResponse> ExecuteAsync(
        RpcRequest request,
        byte[]? routeKey,
        Func<RangeInfo?, RpcRequest>? adapt,
        CancellationToken ct,
        bool initSemantics = false,
        bool rawErrors = false)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct, _disposing.Token);
        deadline.CancelAfter(_options.RequestTimeout);
        var token = deadline.Token;
        var startedAt = Environment.TickCount64;

        string? lastError = null;
        string? redirect = null;   // where the next attempt goes (a NotLeaseholder hint), if set
        string? avoid = null;      // the server that failed last: "any server" picks another when it can
        var backoffStep = 0;
        var redirects = 0;
        var rangeNotFound = 0;
        var unavailableInARow = 0;
        var earlierAnswerLost = false;   // an earlier attempt may have reached a server, its answer never came

        while (true)
        {
            string? address = null;
            var calling = false;
            try
            {
                RangeInfo? range = null;
                if (routeKey is not null)
                {
                    range = _ranges.Find(routeKey) ?? await LookupAsync(routeKey, avoid, token).ConfigureAwait(false);
                }

                address = redirect;
                redirect = null;
                if (address is null && range is not null)
                {
                    address = await LeaseholderAddressAsync(range, token).ConfigureAwait(false);
                }

                address ??= _pool.PickAny(avoid);
                if (_pool.IsSuspect(address))
                {
                    // Every server failed recently: wait a little before knocking again.
                    await BackoffAsync(backoffStep++, token).ConfigureAwait(false);
                }

                var toSend = adapt is null ? request : adapt(range);
                RpcResponse response;
                if (_options.LocalHandler is { } local && string.Equals(address, _options.LocalAddress, StringComparison.Ordinal))
                {
                    response = await local(toSend, token).ConfigureAwait(false);
                }
                else
                {
                    var remaining = Remaining(startedAt);
                    var rpc = await _pool.ConnectAsync(address, Min(_options.ConnectTimeout, remaining), token).ConfigureAwait(false);
                    if (_options.InjectedDelay > TimeSpan.Zero)
                    {
                        await Task.Delay(_options.InjectedDelay, token).ConfigureAwait(false);
                    }

                    calling = true;
                    response = await rpc.CallAsync(toSend, Min(_options.AttemptTimeout, Remaining(startedAt)), token).ConfigureAwait(false);
                    calling = false;
                    if (_options.InjectedDelay > TimeSpan.Zero)
                    {
                        await Task.Delay(_options.InjectedDelay, token).ConfigureAwait(false);
                    }
                }

                Learn(response.Range);
                if (response.Error is not { } error)
                {
                    return response;
                }

                lastError = $"{address}: {Describe(error)}";
                switch (error.Code)
                {
                    case RpcErrorCode.NotLeaseholder:
                    {
                        unavailableInARow = 0;
                        var hinted = await HintAddressAsync(error, token).ConfigureAwait(false);
                        if (routeKey is not null)
                        {
                            _ranges.SetLeaseholder(routeKey, error.LeaseholderHint, hinted);
                        }

                        if (hinted is not null && !string.Equals(hinted, address, StringComparison.Ordinal) && !_pool.IsSuspect(hinted))
                        {
                            redirect = hinted;
                            if (++redirects > RedirectsBeforeBackoff)
                            {
                                await BackoffAsync(backoffStep++, token).ConfigureAwait(false);
                            }
                        }
                        else
                        {
                            // No usable hint: forget the leaseholder and ask elsewhere after a pause.
                            if (routeKey is not null)
                            {
                                _ranges.SetLeaseholder(routeKey, 0, null);
                            }

                            avoid = address;
                            await BackoffAsync(backoffStep++, token).ConfigureAwait(false);
                        }

                        continue;
                    }

                    case RpcErrorCode.RangeNotFound:
                        unavailableInARow = 0;
                        if (range is not null)
                        {
                            _ranges.Remove(range);
                        }

                        if (routeKey is not null && _ranges.Find(routeKey) is { } stale)
                        {
                            _ranges.Remove(stale);
                        }

                        avoid = address;
                        if (++rangeNotFound > 1)
                        {
                            await BackoffAsync(backoffStep++, token).ConfigureAwait(false);
                        }

                        continue;

                    case RpcErrorCode.Unavailable:
                        if (++unavailableInARow >= UnavailableBeforeMovingOn)
                        {
                            // This server keeps failing to serve: try the others too.
                            unavailableInARow = 0;
                            avoid = address;
                            if (routeKey is not null)
                            {
                                _ranges.SetLeaseholder(routeKey, 0, null);
                            }
                        }

                        await BackoffAsync(backoffStep++, token).ConfigureAwait(false);
                        continue;

                    case RpcErrorCode.Ambiguous or RpcErrorCode.TxnAborted or RpcErrorCode.ConditionFailed or RpcErrorCode.BadRequest or RpcErrorCode.Internal when rawErrors:
                        return response;

                    case RpcErrorCode.Ambiguous:
                        throw new CanopyAmbiguousException($"{request.Method}: outcome unknown: {error.Message}", address);

                    case RpcErrorCode.AlreadyInitialized when initSemantics && earlierAnswerLost:
                        return response;

                    default:
                        throw new CanopyRpcException(error.Code, string.IsNullOrWhiteSpace(error.Message) ? Describe(error) : error.Message, address);
                }
            }
            catch (Exception ex) when (token.IsCancellationRequested && ex is not CanopyException && ex is not ArgumentException)
            {
                ct.ThrowIfCancellationRequested();
                ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
                var last = lastError ?? (address is null ? ex.Message : $"no answer from {address}");
                throw new CanopyUnavailableException(
                    $"{request.Method} did not complete within {Seconds(_options.RequestTimeout)}: {last}",
                    ex);
            }
            catch (Exception ex) when (ex is RpcConnectionException or TimeoutException && address is not null)
            {
                lastError = ex.Message;
                earlierAnswerLost |= calling;
                OnServerFailed(address);
                avoid = address;
                redirect = null;
            }
        }
    }

    // ---------------------------------------------------------------- helpers

    /// <summary>Pings the seeds in order, starting the next when the previous failed or has not answered in 250 ms.</summary>
    private async Task ProbeAsync(IReadOnlyList<string> seeds, CancellationToken ct)
    {
        var stagger = TimeSpan.FromMilliseconds(250);
        var errors = new string?[seeds.Count];
        var running = new List<Task<(int Index, string? Error)>>(seeds.Count);
        var next = 0;
        while (true)
        {
            if (next < seeds.Count)
            {
                var i = next++;
                running.Add(PingAsync(i, seeds[i], ct));
            }

            if (running.Count == 0)
            {
                break;
            }

            var delay = next < seeds.Count ? Task.Delay(stagger, ct) : null;
            var any = Task.WhenAny(running);
            var done = delay is null ? await any.ConfigureAwait(false) : await Task.WhenAny(any, delay).ConfigureAwait(false);
            ct.ThrowIfCancellationRequested();
            if (done == delay)
            {
                continue;
            }

            var finished = await any.ConfigureAwait(false);
            running.Remove(finished);
            var (index, error) = await finished.ConfigureAwait(false);
            if (error is null)
            {
                return;
            }

            errors[index] = error;
        }

        var tried = string.Join("; ", errors.Where(e => e is not null));
        throw new CanopyUnavailableException(tried.Length == 0 ? "no server answered" : tried);
    }

    /// <summary>Connects to <paramref name="address"/> and pings it, all within ConnectTimeout. Null when it answered.</summary>
    private async Task<(int Index, string? Error)> PingAsync(int index, string address, CancellationToken ct)
    {
        var startedAt = Environment.TickCount64;
        try
        {
            var rpc = await _pool.ConnectAsync(address, _options.ConnectTimeout, ct).ConfigureAwait(false);
            var left = _options.ConnectTimeout - TimeSpan.FromMilliseconds(Environment.TickCount64 - startedAt);
            await rpc.CallAsync(new RpcRequest { Method = RpcMethods.Ping }, Max(left, TimeSpan.FromMilliseconds(100)), ct).ConfigureAwait(false);
            return (index, null);
        }
        catch (Exception ex) when (ex is RpcConnectionException or TimeoutException)
        {
            OnServerFailed(address);
            return (index, ex.Message);
        }
        catch (Exception ex)
        {
            // Cancelled, or the client was disposed while this probe ran in the background.
            return (index, ex.Message);
        }
    }

    /// <summary>One attempt at one server; a connection failure or no answer marks it suspect and is rethrown.</summary>
    private async Task<RpcResponse> CallOnceAsync(string address, RpcRequest request, TimeSpan timeout, CancellationToken ct)
    {
        try
        {
            var rpc = await _pool.ConnectAsync(address, Min(timeout, _options.ConnectTimeout), ct).ConfigureAwait(false);
            return await rpc.CallAsync(request, timeout, ct).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is RpcConnectionException or TimeoutException && !ct.IsCancellationRequested)
        {
            OnServerFailed(address);
            throw;
        }
    }

    /// <summary>Asks any server (not <paramref name="avoid"/> if possible) for the range of <paramref name="key"/>.</summary>
    private async Task<RangeInfo?> LookupAsync(byte[] key, string? avoid, CancellationToken ct)
    {
        var address = _pool.PickAny(avoid);
        try
        {
            var response = await CallOnceAsync(address, new RpcRequest { Method = RpcMethods.RangeLookup, Key = key }, _options.AttemptTimeout, ct).ConfigureAwait(false);
            Learn(response.Range);
            if (response.Ranges is { } ranges)
            {
                foreach (var r in ranges)
                {
                    Learn(r);
                }
            }
        }
        catch (Exception ex) when (ex is RpcConnectionException or TimeoutException && !ct.IsCancellationRequested)
        {
            // No lookup: the request goes to any server, whose answer (range, hint) fills the cache.
        }

        return _ranges.Find(key);
    }

    /// <summary>Where the cached leaseholder of <paramref name="range"/> listens, unless unknown or suspect.</summary>
    private async ValueTask<string?> LeaseholderAddressAsync(RangeInfo range, CancellationToken ct)
    {
        var address = range.LeaseholderAddress;
        if (string.IsNullOrEmpty(address) && range.Leaseholder != 0 && !_nodes.TryGetValue(range.Leaseholder, out address))
        {
            await RefreshNodesAsync(ct).ConfigureAwait(false);
            _nodes.TryGetValue(range.Leaseholder, out address);
        }

        return string.IsNullOrEmpty(address) || _pool.IsSuspect(address) ? null : address;
    }

    /// <summary>The address a NotLeaseholder hint points to (the node map resolves a bare node id), or null.</summary>
    private async ValueTask<string?> HintAddressAsync(RpcError error, CancellationToken ct)
    {
        if (!string.IsNullOrEmpty(error.LeaseholderAddress))
        {
            if (error.LeaseholderHint != 0)
            {
                _nodes[error.LeaseholderHint] = error.LeaseholderAddress;
            }

            _pool.AddKnown(error.LeaseholderAddress);
            return error.LeaseholderAddress;
        }

        if (error.LeaseholderHint == 0)
        {
            return null;
        }

        if (_nodes.TryGetValue(error.LeaseholderHint, out var address))
        {
            return address;
        }

        await RefreshNodesAsync(ct).ConfigureAwait(false);
        return _nodes.TryGetValue(error.LeaseholderHint, out address) ? address : null;
    }

    /// <summary>Refreshes the node map from `node_status` (at most once a second; concurrent callers share one call).</summary>
    private Task RefreshNodesAsync(CancellationToken ct)
    {
        Task refresh;
        lock (_nodesGate)
        {
            if (_nodesRefresh is { IsCompleted: false } running)
            {
                refresh = running;
            }
            else if (_nodesRefreshedAt != 0 && Environment.TickCount64 - _nodesRefreshedAt < (long)NodeRefreshInterval.TotalMilliseconds)
            {
                return Task.CompletedTask;
            }
            else
            {
                _nodesRefreshedAt = Environment.TickCount64;
                refresh = _nodesRefresh = RefreshNodesCoreAsync();
            }
        }

        return refresh.WaitAsync(ct);
    }

    private async Task RefreshNodesCoreAsync()
    {
        try
        {
            var response = await CallOnceAsync(_pool.PickAny(null), new RpcRequest { Method = RpcMethods.NodeStatus }, _options.AttemptTimeout, _disposing.Token).ConfigureAwait(false);
            LearnNodes(response.Nodes ?? []);
        }
        catch (Exception ex) when (ex is RpcConnectionException or TimeoutException or OperationCanceledException or ObjectDisposedException)
        {
            // Best effort: routing falls back to any server.
        }
    }

    private void Learn(RangeInfo? range)
    {
        if (range is null)
        {
            return;
        }

        _ranges.Learn(range);
        if (range.Leaseholder != 0 && !string.IsNullOrEmpty(range.LeaseholderAddress))
        {
            _nodes[range.Leaseholder] = range.LeaseholderAddress;
            _pool.AddKnown(range.LeaseholderAddress);
        }
    }

    private void LearnNodes(IReadOnlyList<NodeInfo> nodes)
    {
        foreach (var n in nodes)
        {
            if (n is null || string.IsNullOrEmpty(n.Address) || ParseAddressError(n.Address) is not null)
            {
                continue;
            }

            if (n.NodeId != 0)
            {
                _nodes[n.NodeId] = n.Address;
            }

            if (!string.Equals(n.State, "down", StringComparison.OrdinalIgnoreCase))
            {
                _pool.AddKnown(n.Address);
            }
        }
    }

    /// <summary>A server failed: avoid it for a while and forget the leases cached on it.</summary>
    private void OnServerFailed(string address)
    {
        if (!_pool.MarkSuspect(address))
        {
            return;
        }

        _ranges.ClearLeaseholders(r =>
            string.Equals(r.LeaseholderAddress, address, StringComparison.Ordinal) ||
            (string.IsNullOrEmpty(r.LeaseholderAddress) && r.Leaseholder != 0 &&
             _nodes.TryGetValue(r.Leaseholder, out var a) && string.Equals(a, address, StringComparison.Ordinal)));
    }

    private Task BackoffAsync(int step, CancellationToken ct)
    {
        var ms = Math.Min(_options.MaxBackoff.TotalMilliseconds, _options.MinBackoff.TotalMilliseconds * Math.Pow(2, Math.Min(step, 30)));
        ms *= 0.5 + (Random.Shared.NextDouble() * 0.5);
        return Task.Delay(TimeSpan.FromMilliseconds(Math.Max(1, ms)), ct);
    }

    private TimeSpan Remaining(long startedAt)
    {
        var left = _options.RequestTimeout - TimeSpan.FromMilliseconds(Environment.TickCount64 - startedAt);
        return left > TimeSpan.FromMilliseconds(1) ? left : TimeSpan.FromMilliseconds(1);
    }

    private static TimeSpan Min(TimeSpan a, TimeSpan b) => a < b ? a : b;

    private static TimeSpan Max(TimeSpan a, TimeSpan b) => a > b ? a : b;

    /// <summary>The smaller of two exclusive end keys (null = the end of the key space).</summary>
    private static byte[]? MinEnd(byte[]? a, byte[]? b) =>
        a is null ? b : b is null ? a : KeyOrder.Compare(a, b) <= 0 ? a : b;

    private static string Seconds(TimeSpan t) =>
        t.TotalSeconds >= 1
            ? string.Create(CultureInfo.InvariantCulture, $"{t.TotalSeconds:0.#} s")
            : string.Create(CultureInfo.InvariantCulture, $"{t.TotalMilliseconds:0} ms");

    private static string Describe(RpcError error)
    {
        var code = error.Code switch
        {
            RpcErrorCode.BadRequest => "bad request",
            RpcErrorCode.NotLeaseholder => "not leaseholder",
            RpcErrorCode.RangeNotFound => "range not found",
            RpcErrorCode.Unavailable => "unavailable",
            RpcErrorCode.NotInitialized => "not initialised",
            RpcErrorCode.Ambiguous => "ambiguous",
            RpcErrorCode.AlreadyInitialized => "already initialised",
            RpcErrorCode.Refused => "refused",
            RpcErrorCode.Internal => "internal error",
            _ => $"error {(int)error.Code}",
        };
        return string.IsNullOrWhiteSpace(error.Message) ? code : $"{code}: {CanopyException.OneLine(error.Message)}";
    }

    private static void CheckKey(byte[] key)
    {
        ArgumentNullException.ThrowIfNull(key);
        if (CanopyKeys.Validate(key) is { } why)
        {
            throw new ArgumentException($"invalid key: {why}");
        }
    }

    private static void CheckValue(byte[] value)
    {
        ArgumentNullException.ThrowIfNull(value);
        if (CanopyKeys.ValidateValue(value) is { } why)
        {
            throw new ArgumentException($"invalid value: {why}");
        }
    }

    /// <summary>Why <paramref name="address"/> is not HOST:PORT, or null.</summary>
    internal static string? ParseAddressError(string address)
    {
        var colon = address.LastIndexOf(':');
        if (colon <= 0 || colon == address.Length - 1)
        {
            return $"invalid address '{address}': expected HOST:PORT";
        }

        return int.TryParse(address.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out var port) && port is > 0 and <= 65535
            ? null
            : $"invalid port in address '{address}': expected 1-65535";
    }
}
