namespace Canopy.Tree;

using Canopy.Client;

/// <summary>A value an operation produced and the commit timestamp ("wall.logical") of its transaction.</summary>
public sealed record TreeResult<T>(T Value, string? Timestamp);

/// <summary>
/// One Godot scene tree on the store (DESIGN §9, docs/tree.md). Every method is one serializable transaction run by
/// the runner (retried after retryable aborts): it commits entirely or writes nothing. Refusals are
/// <see cref="TreeException"/>s (typed: <see cref="NameConflictException"/>, <see cref="NotOwnerException"/>, …); a
/// transaction that does not commit is a <see cref="TreeTransactionException"/> (aborted or ambiguous).
/// </summary>
public sealed class SceneTree
{
    /// <summary>The virtual root (never stored): its children are the tree's top-level nodes.</summary>
    public static readonly Guid Root = Guid.Empty;

    private readonly TreeTxnRunner _runner;

    public SceneTree(string treeName, TreeTxnRunner runner, SceneTreeOptions? options = null)
    {
        Keys = new TreeKeys(treeName);
        _runner = runner ?? throw new ArgumentNullException(nameof(runner));
        Options = options ?? new SceneTreeOptions();
    }

    /// <summary>A tree whose transactions run through <paramref name="client"/>.</summary>
    public static SceneTree ForClient(CanopyClient client, string treeName, SceneTreeOptions? options = null, TransactionOptions? transactionOptions = null) =>
        new(treeName, CanopyTreeTxn.Runner(client, transactionOptions), options) { Client = client };

    /// <summary>The client subscriptions use (set by <see cref="ForClient"/>; a gateway sets its own).</summary>
    public CanopyClient? Client { get; init; }

    /// <summary>
    /// Subscribes to <paramref name="interest"/> (docs/subscriptions.md): a snapshot batch then consistent batches of
    /// node events; with <paramref name="from"/>, resumes after that resolved timestamp instead (no snapshot).
    /// </summary>
    public IAsyncEnumerable<TreeBatch> WatchAsync(TreeInterest interest, CanopyTimestamp? from = null, WatchOptions? options = null, CancellationToken ct = default) =>
        new TreeWatcher(Client ?? throw new InvalidOperationException("this SceneTree has no client to subscribe with (use SceneTree.ForClient)"), Keys)
            .WatchAsync(interest, from, options, ct);

    public TreeKeys Keys { get; }

    public string Name => Keys.TreeName;

    public SceneTreeOptions Options { get; }

    /// <summary>The local clock in Unix nanoseconds (HLC wall units).</summary>
    internal long NowNanos() => (Options.Time.GetUtcNow() - DateTimeOffset.UnixEpoch).Ticks * 100;

    /// <summary>
    /// Runs <paramref name="body"/> (any tree operations, and other keys through <see cref="TreeTransaction.Txn"/>) in
    /// one transaction. The body may run more than once (retries); its value is that of the attempt that committed.
    /// </summary>
    /// <exception cref="TreeTransactionException">It did not commit.</exception>
    public async Task<TreeResult<T>> RunAsync<T>(Func<TreeTransaction, Task<T>> body, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(body);
        var value = default(T);
        var result = await _runner(async txn => value = await body(new TreeTransaction(this, txn, ct)).ConfigureAwait(false), ct).ConfigureAwait(false);
        if (!result.IsCommitted)
        {
            throw new TreeTransactionException(result);
        }

        return new TreeResult<T>(value!, result.CommitTimestamp);
    }

    /// <inheritdoc cref="RunAsync{T}"/>
    public async Task<string?> RunAsync(Func<TreeTransaction, Task> body, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(body);
        var r = await RunAsync(async t =>
        {
            await body(t).ConfigureAwait(false);
            return true;
        }, ct).ConfigureAwait(false);
        return r.Timestamp;
    }

    // ---------------------------------------------------------------- structure

    /// <inheritdoc cref="TreeTransaction.SpawnAsync"/>
    public Task<TreeResult<SpawnedNode>> SpawnAsync(Guid parent, NodeSpec spec, CancellationToken ct = default)
    {
        var plan = TreeTransaction.Plan(spec); // UUIDs fixed once, whatever the retries
        return RunAsync(t => t.SpawnPlannedAsync(parent, plan), ct);
    }

    /// <inheritdoc cref="TreeTransaction.FreeAsync"/>
    public Task<TreeResult<int>> FreeAsync(Guid node, CancellationToken ct = default) => RunAsync(t => t.FreeAsync(node), ct);

    /// <inheritdoc cref="TreeTransaction.RenameAsync"/>
    public Task<string?> RenameAsync(Guid node, string newName, CancellationToken ct = default) => RunAsync(t => t.RenameAsync(node, newName), ct);

    /// <inheritdoc cref="TreeTransaction.ReparentAsync"/>
    public Task<string?> ReparentAsync(Guid node, Guid newParent, string? newName = null, CancellationToken ct = default) =>
        RunAsync(t => t.ReparentAsync(node, newParent, newName), ct);

    /// <inheritdoc cref="TreeTransaction.MoveAsync"/>
    public Task<TreeResult<int>> MoveAsync(Guid node, Placement placement, bool subtree = false, CancellationToken ct = default) =>
        RunAsync(t => t.MoveAsync(node, placement, subtree), ct);

    // ---------------------------------------------------------------- properties

    /// <inheritdoc cref="TreeTransaction.SetPropertiesAsync"/>
    public Task<string?> SetPropertiesAsync(string? session, IReadOnlyList<NodeProperties> batch, CancellationToken ct = default) =>
        RunAsync(t => t.SetPropertiesAsync(session, batch), ct);

    /// <summary>Writes one property of one node (see <see cref="TreeTransaction.SetPropertiesAsync"/>).</summary>
    public Task<string?> SetPropertyAsync(string? session, Guid node, string name, byte[]? value, CancellationToken ct = default) =>
        SetPropertiesAsync(session, [new NodeProperties(node, new Dictionary<string, byte[]?> { [name] = value })], ct);

    // ---------------------------------------------------------------- reads (each one consistent transaction)

    /// <inheritdoc cref="TreeTransaction.GetNodeAsync"/>
    public async Task<TreeNode?> GetNodeAsync(Guid node, CancellationToken ct = default) =>
        (await RunAsync(t => t.GetNodeAsync(node), ct).ConfigureAwait(false)).Value;

    /// <summary>The subtree under <paramref name="node"/> (down to <paramref name="maxDepth"/>) as of one timestamp.</summary>
    /// <exception cref="NodeNotFoundException">It does not exist.</exception>
    public async Task<TreeSnapshot> ReadSubtreeAsync(Guid node, int maxDepth = int.MaxValue, CancellationToken ct = default)
    {
        var r = await RunAsync(t => t.ReadSubtreeAsync(node, maxDepth), ct).ConfigureAwait(false);
        return new TreeSnapshot(r.Value, r.Timestamp);
    }

    /// <inheritdoc cref="TreeTransaction.ListChildrenAsync"/>
    public async Task<IReadOnlyList<ChildEntry>> ListChildrenAsync(Guid parent, CancellationToken ct = default) =>
        (await RunAsync(t => t.ListChildrenAsync(parent), ct).ConfigureAwait(false)).Value;

    /// <inheritdoc cref="TreeTransaction.ResolvePathAsync"/>
    public async Task<Guid?> ResolvePathAsync(string path, CancellationToken ct = default) =>
        (await RunAsync(t => t.ResolvePathAsync(path), ct).ConfigureAwait(false)).Value;

    /// <inheritdoc cref="TreeTransaction.ListRegionAsync"/>
    public async Task<IReadOnlyList<NodeRecord>> ListRegionAsync(string region, CancellationToken ct = default) =>
        (await RunAsync(t => t.ListRegionAsync(region), ct).ConfigureAwait(false)).Value;

    // ---------------------------------------------------------------- sessions and ownership

    /// <inheritdoc cref="TreeTransaction.OpenSessionAsync"/>
    public async Task<SessionInfo> OpenSessionAsync(string session, TimeSpan? lease = null, CancellationToken ct = default) =>
        (await RunAsync(t => t.OpenSessionAsync(session, lease), ct).ConfigureAwait(false)).Value;

    /// <inheritdoc cref="TreeTransaction.RenewSessionAsync"/>
    public async Task<SessionInfo> RenewSessionAsync(string session, CancellationToken ct = default) =>
        (await RunAsync(t => t.RenewSessionAsync(session), ct).ConfigureAwait(false)).Value;

    /// <inheritdoc cref="TreeTransaction.CloseSessionAsync"/>
    public Task<string?> CloseSessionAsync(string session, CancellationToken ct = default) => RunAsync(t => t.CloseSessionAsync(session), ct);

    /// <inheritdoc cref="TreeTransaction.GetSessionAsync"/>
    public async Task<SessionInfo?> GetSessionAsync(string session, CancellationToken ct = default) =>
        (await RunAsync(t => t.GetSessionAsync(session), ct).ConfigureAwait(false)).Value;

    /// <summary>Opens the session and keeps its lease renewed until disposed (<see cref="OwnerSession"/>).</summary>
    public Task<OwnerSession> StartSessionAsync(string session, TimeSpan? lease = null, CancellationToken ct = default) =>
        OwnerSession.StartAsync(this, session, lease, ct);

    /// <inheritdoc cref="TreeTransaction.GetOwnerAsync"/>
    public async Task<OwnerInfo> GetOwnerAsync(Guid node, CancellationToken ct = default) =>
        (await RunAsync(t => t.GetOwnerAsync(node), ct).ConfigureAwait(false)).Value;

    /// <inheritdoc cref="TreeTransaction.TakeOwnershipAsync"/>
    public Task<string?> TakeOwnershipAsync(string session, IReadOnlyList<Guid> nodes, CancellationToken ct = default) =>
        RunAsync(t => t.TakeOwnershipAsync(session, nodes), ct);

    /// <inheritdoc cref="TreeTransaction.ReleaseOwnershipAsync"/>
    public Task<string?> ReleaseOwnershipAsync(string session, IReadOnlyList<Guid> nodes, CancellationToken ct = default) =>
        RunAsync(t => t.ReleaseOwnershipAsync(session, nodes), ct);

    /// <inheritdoc cref="TreeTransaction.HandoffAsync"/>
    public Task<string?> HandoffAsync(string from, string to, Guid node, IReadOnlyDictionary<string, byte[]?>? finalProperties = null, CancellationToken ct = default) =>
        RunAsync(t => t.HandoffAsync(from, to, node, finalProperties), ct);
}
