namespace Canopy.Tree;

/// <summary>
/// The tree operations inside one transaction (one attempt of it). <see cref="SceneTree"/> runs each operation in its
/// own transaction; <see cref="SceneTree.RunAsync{T}"/> hands one of these to a body that combines several (all commit
/// or none). A refused operation throws a <see cref="TreeException"/>, which rolls the whole transaction back.
/// One operation at a time.
/// </summary>
public sealed class TreeTransaction
{
    /// <summary>Parent chains longer than this are taken for damage (a cycle), not walked further.</summary>
    public const int MaxDepth = 4096;

    private readonly SceneTree _tree;
    private readonly ITreeTxn _txn;
    private readonly CancellationToken _ct;
    private readonly TreeKeys _keys;

    internal TreeTransaction(SceneTree tree, ITreeTxn txn, CancellationToken ct)
    {
        _tree = tree;
        _txn = txn;
        _ct = ct;
        _keys = tree.Keys;
    }

    /// <summary>The underlying transaction (for reads and writes of keys outside the tree in the same transaction).</summary>
    public ITreeTxn Txn => _txn;

    internal static NodeRecord RootRecord { get; } = new(SceneTree.Root, SceneTree.Root, "root", NodeKind.Class, "Window", null, Placement.Hashed);

    // ================================================================ lookups

    /// <summary>Where the node's keys live, or null if it does not exist. The root is hash-placed.</summary>
    public async Task<Placement?> LocateAsync(Guid id)
    {
        if (id == SceneTree.Root)
        {
            return Placement.Hashed;
        }

        var v = await GetAsync(_keys.Locator(id)).ConfigureAwait(false);
        return v is null ? null : TreeCodec.DecodeLocator(v);
    }

    /// <summary>The node's record, or null if it does not exist. The root's is virtual (never stored).</summary>
    public async Task<NodeRecord?> GetRecordAsync(Guid id)
    {
        if (id == SceneTree.Root)
        {
            return RootRecord;
        }

        var placement = await LocateAsync(id).ConfigureAwait(false);
        if (placement is not { } p)
        {
            return null;
        }

        var v = await GetAsync(_keys.Record(id, p)).ConfigureAwait(false)
            ?? throw new TreeFormatException($"node {id}: a locator ({p}) without a record (the layout's invariants are broken)");
        return TreeCodec.DecodeRecord(v);
    }

    /// <summary>The node with its properties and children index (no children read), or null if it does not exist.</summary>
    public async Task<TreeNode?> GetNodeAsync(Guid id)
    {
        var placement = await LocateAsync(id).ConfigureAwait(false);
        return placement is { } p ? await ReadHomeAsync(id, p, 0).ConfigureAwait(false) : null;
    }

    /// <summary>The node and its descendants down to <paramref name="maxDepth"/> levels below it (0: the node alone).</summary>
    /// <exception cref="NodeNotFoundException">It does not exist.</exception>
    public async Task<TreeNode> ReadSubtreeAsync(Guid id, int maxDepth = int.MaxValue)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(maxDepth);
        var placement = await LocateAsync(id).ConfigureAwait(false) ?? throw new NodeNotFoundException(id);
        return await ReadHomeAsync(id, placement, maxDepth).ConfigureAwait(false);
    }

    /// <summary>The children index of a node, in name order (bytewise UTF-8).</summary>
    /// <exception cref="NodeNotFoundException">It does not exist.</exception>
    public async Task<IReadOnlyList<ChildEntry>> ListChildrenAsync(Guid parent)
    {
        var placement = await LocateAsync(parent).ConfigureAwait(false) ?? throw new NodeNotFoundException(parent);
        var (start, end) = _keys.Children(parent, placement);
        var rows = await ScanAsync(start, end).ConfigureAwait(false);
        var list = new List<ChildEntry>(rows.Count);
        foreach (var row in rows)
        {
            list.Add(DecodeEntry(row, start.Length));
        }

        return list;
    }

    /// <summary>
    /// The node at <paramref name="path"/> ("/a/b/c" or "a/b/c", names from the root; "/" or "" is the root), or null
    /// when a name on the way does not exist.
    /// </summary>
    public async Task<Guid?> ResolvePathAsync(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        var id = SceneTree.Root;
        var placement = Placement.Hashed;
        foreach (var name in path.Split('/', StringSplitOptions.RemoveEmptyEntries))
        {
            TreeKeys.ValidateName(name);
            var v = await GetAsync(_keys.Child(id, placement, name)).ConfigureAwait(false);
            if (v is null)
            {
                return null;
            }

            (id, placement) = TreeCodec.DecodeChild(v);
        }

        return id;
    }

    /// <summary>The records of every node placed in <paramref name="region"/> (one scan of one span), in key order.</summary>
    public async Task<IReadOnlyList<NodeRecord>> ListRegionAsync(string region)
    {
        var (start, end) = _keys.Region(region);
        var rows = await ScanAsync(start, end).ConfigureAwait(false);
        var list = new List<NodeRecord>();
        foreach (var row in rows)
        {
            if (row.Key.Length == start.Length + 17 && row.Key[^1] == TreeKeys.SuffixRecord)
            {
                list.Add(TreeCodec.DecodeRecord(row.Value));
            }
        }

        return list;
    }

    // ================================================================ structure

    /// <summary>
    /// Spawns <paramref name="spec"/> (and its subtree) under <paramref name="parent"/>: the records, locators,
    /// properties and children-index entries, wherever each node is placed.
    /// </summary>
    /// <exception cref="NodeNotFoundException">The parent does not exist.</exception>
    /// <exception cref="NameConflictException">A name is taken among its siblings (also within the spec).</exception>
    /// <exception cref="NodeExistsException">A UUID given in the spec is in use.</exception>
    public Task<SpawnedNode> SpawnAsync(Guid parent, NodeSpec spec) => SpawnPlannedAsync(parent, Plan(spec));

    internal async Task<SpawnedNode> SpawnPlannedAsync(Guid parent, PlannedNode plan)
    {
        var parentRecord = await RequireRecordAsync(parent).ConfigureAwait(false);
        var live = new HashSet<string>(StringComparer.Ordinal);
        return await SpawnUnderAsync(parentRecord, plan, live).ConfigureAwait(false);
    }

    private async Task<SpawnedNode> SpawnUnderAsync(NodeRecord parent, PlannedNode plan, HashSet<string> liveSessions)
    {
        var spec = plan.Spec;
        var entryKey = _keys.Child(parent.Id, parent.Placement, spec.Name);
        if (await GetAsync(entryKey).ConfigureAwait(false) is { } existing)
        {
            throw new NameConflictException(parent.Id, spec.Name, TreeCodec.DecodeChild(existing).Id);
        }

        if (plan.IdGiven && await GetAsync(_keys.Locator(plan.Id)).ConfigureAwait(false) is not null)
        {
            throw new NodeExistsException(plan.Id);
        }

        if (spec.Owner is { } owner && liveSessions.Add(owner))
        {
            await RequireLiveSessionAsync(owner).ConfigureAwait(false);
        }

        var record = new NodeRecord(plan.Id, parent.Id, spec.Name, spec.Kind, spec.Type, spec.Owner, spec.Placement);
        await PutAsync(_keys.Record(plan.Id, spec.Placement), TreeCodec.EncodeRecord(record)).ConfigureAwait(false);
        await PutAsync(_keys.Locator(plan.Id), TreeCodec.EncodeLocator(spec.Placement)).ConfigureAwait(false);
        await PutAsync(entryKey, TreeCodec.EncodeChild(plan.Id, spec.Placement)).ConfigureAwait(false);
        if (spec.Properties is { } props)
        {
            foreach (var (name, value) in props)
            {
                await PutAsync(_keys.Property(plan.Id, spec.Placement, name), value).ConfigureAwait(false);
            }
        }

        var children = new List<SpawnedNode>(plan.Children.Count);
        foreach (var child in plan.Children)
        {
            children.Add(await SpawnUnderAsync(record, child, liveSessions).ConfigureAwait(false));
        }

        return new SpawnedNode(plan.Id, spec.Name, children);
    }

    /// <summary>Frees the node and its whole subtree: every key of every node in it, and its parent's index entry. Returns how many nodes.</summary>
    /// <exception cref="NodeNotFoundException">It does not exist.</exception>
    public async Task<int> FreeAsync(Guid id)
    {
        if (id == SceneTree.Root)
        {
            throw new RootNodeException("freed");
        }

        var record = await RequireRecordAsync(id).ConfigureAwait(false);
        var parentPlacement = await ParentPlacementAsync(record).ConfigureAwait(false);
        await DeleteAsync(_keys.Child(record.Parent, parentPlacement, record.Name)).ConfigureAwait(false);
        return await FreeHomeAsync(id, record.Placement, 0).ConfigureAwait(false);
    }

    private async Task<int> FreeHomeAsync(Guid id, Placement placement, int depth)
    {
        if (depth > MaxDepth)
        {
            throw new TreeFormatException($"the subtree under node {id} is deeper than {MaxDepth} (a cycle?)");
        }

        var (start, end) = _keys.HomeSpan(id, placement);
        var rows = await ScanAsync(start, end).ConfigureAwait(false);
        var count = 1;
        foreach (var row in rows)
        {
            if (row.Key[start.Length] == TreeKeys.SuffixChild)
            {
                var (child, childPlacement) = TreeCodec.DecodeChild(row.Value);
                count += await FreeHomeAsync(child, childPlacement, depth + 1).ConfigureAwait(false);
            }

            await DeleteAsync(row.Key).ConfigureAwait(false);
        }

        await DeleteAsync(_keys.Locator(id)).ConfigureAwait(false);
        return count;
    }

    /// <summary>Renames a node (its name stays unique among its siblings).</summary>
    /// <exception cref="NodeNotFoundException">It does not exist.</exception>
    /// <exception cref="NameConflictException">A sibling has that name.</exception>
    public async Task RenameAsync(Guid id, string newName)
    {
        TreeKeys.ValidateName(newName);
        if (id == SceneTree.Root)
        {
            throw new RootNodeException("renamed");
        }

        var record = await RequireRecordAsync(id).ConfigureAwait(false);
        if (record.Name == newName)
        {
            return;
        }

        var parentPlacement = await ParentPlacementAsync(record).ConfigureAwait(false);
        var newKey = _keys.Child(record.Parent, parentPlacement, newName);
        if (await GetAsync(newKey).ConfigureAwait(false) is { } existing)
        {
            throw new NameConflictException(record.Parent, newName, TreeCodec.DecodeChild(existing).Id);
        }

        await DeleteAsync(_keys.Child(record.Parent, parentPlacement, record.Name)).ConfigureAwait(false);
        await PutAsync(newKey, TreeCodec.EncodeChild(id, record.Placement)).ConfigureAwait(false);
        await PutRecordAsync(record with { Name = newName }).ConfigureAwait(false);
    }

    /// <summary>Moves a node (with its subtree) under <paramref name="newParent"/>, optionally renaming it. Its keys stay where they are.</summary>
    /// <exception cref="NodeNotFoundException">It or the new parent does not exist.</exception>
    /// <exception cref="TreeCycleException">The new parent is the node or one of its descendants.</exception>
    /// <exception cref="NameConflictException">The new parent has a child of that name.</exception>
    public async Task ReparentAsync(Guid id, Guid newParent, string? newName = null)
    {
        if (newName is not null)
        {
            TreeKeys.ValidateName(newName);
        }

        if (id == SceneTree.Root)
        {
            throw new RootNodeException("reparented");
        }

        if (newParent == id)
        {
            throw new TreeCycleException(id, newParent);
        }

        var record = await RequireRecordAsync(id).ConfigureAwait(false);
        var name = newName ?? record.Name;
        var parentRecord = await RequireRecordAsync(newParent).ConfigureAwait(false);

        // Not under its own descendant: walk up from the new parent to the root.
        var cursor = parentRecord;
        for (var depth = 0; cursor.Id != SceneTree.Root; depth++)
        {
            if (depth > MaxDepth)
            {
                throw new TreeFormatException($"the ancestors of node {newParent} go deeper than {MaxDepth} (a cycle?)");
            }

            if (cursor.Parent == id)
            {
                throw new TreeCycleException(id, newParent);
            }

            cursor = await GetRecordAsync(cursor.Parent).ConfigureAwait(false)
                ?? throw new TreeFormatException($"node {cursor.Id} names a parent {cursor.Parent} that does not exist");
        }

        if (newParent == record.Parent && name == record.Name)
        {
            return;
        }

        var newKey = _keys.Child(newParent, parentRecord.Placement, name);
        if (await GetAsync(newKey).ConfigureAwait(false) is { } existing)
        {
            throw new NameConflictException(newParent, name, TreeCodec.DecodeChild(existing).Id);
        }

        var oldParentPlacement = await ParentPlacementAsync(record).ConfigureAwait(false);
        await DeleteAsync(_keys.Child(record.Parent, oldParentPlacement, record.Name)).ConfigureAwait(false);
        await PutAsync(newKey, TreeCodec.EncodeChild(id, record.Placement)).ConfigureAwait(false);
        await PutRecordAsync(record with { Parent = newParent, Name = name }).ConfigureAwait(false);
    }

    /// <summary>
    /// Re-keys the node (record, properties, children index) to <paramref name="placement"/>, updating its locator
    /// and its parent's index entry; with <paramref name="subtree"/> every descendant too. Returns how many nodes moved.
    /// </summary>
    /// <exception cref="NodeNotFoundException">It does not exist.</exception>
    public async Task<int> MoveAsync(Guid id, Placement placement, bool subtree = false)
    {
        if (id == SceneTree.Root)
        {
            throw new RootNodeException("moved");
        }

        var record = await RequireRecordAsync(id).ConfigureAwait(false);
        return await MoveNodeAsync(record, placement, subtree, 0).ConfigureAwait(false);
    }

    private async Task<int> MoveNodeAsync(NodeRecord record, Placement placement, bool subtree, int depth)
    {
        if (depth > MaxDepth)
        {
            throw new TreeFormatException($"the subtree under node {record.Id} is deeper than {MaxDepth} (a cycle?)");
        }

        var moved = 0;
        if (record.Placement != placement)
        {
            var (start, end) = _keys.HomeSpan(record.Id, record.Placement);
            var newHome = _keys.Home(record.Id, placement);
            var rows = await ScanAsync(start, end).ConfigureAwait(false);
            foreach (var row in rows)
            {
                var suffix = row.Key.AsSpan(start.Length);
                byte[] newKey = [.. newHome, .. suffix];
                var value = suffix[0] == TreeKeys.SuffixRecord && suffix.Length == 1
                    ? TreeCodec.EncodeRecord(TreeCodec.DecodeRecord(row.Value) with { Placement = placement })
                    : row.Value;
                await PutAsync(newKey, value).ConfigureAwait(false);
                await DeleteAsync(row.Key).ConfigureAwait(false);
            }

            await PutAsync(_keys.Locator(record.Id), TreeCodec.EncodeLocator(placement)).ConfigureAwait(false);
            var parentPlacement = await ParentPlacementAsync(record).ConfigureAwait(false);
            await PutAsync(_keys.Child(record.Parent, parentPlacement, record.Name), TreeCodec.EncodeChild(record.Id, placement)).ConfigureAwait(false);
            moved = 1;
        }

        if (subtree)
        {
            var (start, end) = _keys.Children(record.Id, placement);
            foreach (var row in await ScanAsync(start, end).ConfigureAwait(false))
            {
                var entry = DecodeEntry(row, start.Length);
                var child = await GetAsync(_keys.Record(entry.Id, entry.Placement)).ConfigureAwait(false)
                    ?? throw new TreeFormatException($"node {record.Id}: the index entry '{entry.Name}' points to a missing record");
                moved += await MoveNodeAsync(TreeCodec.DecodeRecord(child), placement, subtree: true, depth + 1).ConfigureAwait(false);
            }
        }

        return moved;
    }

    // ================================================================ properties

    /// <summary>
    /// Writes properties of several nodes (a null value deletes one). A node with an owner accepts writes only from
    /// that session; a node without one from anyone.
    /// </summary>
    /// <exception cref="NodeNotFoundException">A node does not exist.</exception>
    /// <exception cref="NotOwnerException">A node is owned by another session.</exception>
    public async Task SetPropertiesAsync(string? session, IEnumerable<NodeProperties> batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        var list = batch as IReadOnlyList<NodeProperties> ?? batch.ToList();
        if (_txn is ITreeTxnBatch many && list.Count > 1 && list.All(n => n.Node != SceneTree.Root))
        {
            await SetPropertiesPipelinedAsync(session, list, many).ConfigureAwait(false);
            return;
        }

        foreach (var node in list)
        {
            foreach (var name in node.Values.Keys)
            {
                TreeKeys.ValidatePropertyName(name);
            }

            if (node.Node == SceneTree.Root)
            {
                throw new RootNodeException("given properties");
            }

            var record = await RequireRecordAsync(node.Node).ConfigureAwait(false);
            if (record.Owner is { } owner && owner != session)
            {
                throw new NotOwnerException(record.Id, session, owner);
            }

            await WritePropertiesAsync(record, node.Values).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// The owner's fast path: every record read at its hinted placement in one pipelined batch (a node not found there
    /// moved: read through its locator), ownership checked, then every property written in one pipelined batch.
    /// </summary>
    private async Task SetPropertiesPipelinedAsync(string? session, IReadOnlyList<NodeProperties> list, ITreeTxnBatch many)
    {
        foreach (var node in list)
        {
            foreach (var name in node.Values.Keys)
            {
                TreeKeys.ValidatePropertyName(name);
            }
        }

        // Placements: the hint, else the locator (one batch for all nodes without a hint).
        var placements = new Placement?[list.Count];
        var unknown = Enumerable.Range(0, list.Count).Where(i => list[i].PlacementHint is null).ToList();
        var locators = unknown.Count == 0 ? [] : await many.GetManyAsync(unknown.Select(i => _keys.Locator(list[i].Node)).ToList(), _ct).ConfigureAwait(false);
        for (var i = 0; i < list.Count; i++)
        {
            placements[i] = list[i].PlacementHint;
        }

        for (var j = 0; j < unknown.Count; j++)
        {
            placements[unknown[j]] = locators[j] is { } loc ? TreeCodec.DecodeLocator(loc) : throw new NodeNotFoundException(list[unknown[j]].Node);
        }

        var values = await many.GetManyAsync(list.Select((n, i) => _keys.Record(n.Node, placements[i]!.Value)).ToList(), _ct).ConfigureAwait(false);
        var writes = new List<(byte[] Key, byte[]? Value)>();
        for (var i = 0; i < list.Count; i++)
        {
            var node = list[i];
            var record = values[i] is { } bytes ? TreeCodec.DecodeRecord(bytes) : await RequireRecordAsync(node.Node).ConfigureAwait(false);
            if (record.Owner is { } owner && owner != session)
            {
                throw new NotOwnerException(record.Id, session, owner);
            }

            foreach (var (name, value) in node.Values)
            {
                writes.Add((_keys.Property(record.Id, record.Placement, name), value));
            }
        }

        await many.WriteManyAsync(writes, _ct).ConfigureAwait(false);
    }

    private async Task WritePropertiesAsync(NodeRecord record, IReadOnlyDictionary<string, byte[]?> values)
    {
        foreach (var (name, value) in values)
        {
            var key = _keys.Property(record.Id, record.Placement, name);
            if (value is null)
            {
                await DeleteAsync(key).ConfigureAwait(false);
            }
            else
            {
                await PutAsync(key, value).ConfigureAwait(false);
            }
        }
    }

    // ================================================================ sessions and ownership

    /// <summary>The session's lease record, or null when it does not exist.</summary>
    public async Task<SessionInfo?> GetSessionAsync(string session)
    {
        var v = await GetAsync(_keys.Session(session)).ConfigureAwait(false);
        return v is null ? null : TreeCodec.DecodeSession(session, v);
    }

    /// <summary>Creates the session (or renews it if it exists) with a lease of <paramref name="lease"/> from now.</summary>
    public async Task<SessionInfo> OpenSessionAsync(string session, TimeSpan? lease = null)
    {
        var duration = lease ?? _tree.Options.DefaultLease;
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(duration, TimeSpan.Zero, nameof(lease));
        var info = new SessionInfo(session, NowNanos() + (duration.Ticks * 100), duration);
        await PutAsync(_keys.Session(session), TreeCodec.EncodeSession(info.ExpiresAtNanos, duration)).ConfigureAwait(false);
        return info;
    }

    /// <summary>The heartbeat: extends the session's lease to now + its duration. One key is written, whatever the session owns.</summary>
    /// <exception cref="SessionNotFoundException">The session does not exist (closed).</exception>
    public async Task<SessionInfo> RenewSessionAsync(string session)
    {
        var current = await GetSessionAsync(session).ConfigureAwait(false) ?? throw new SessionNotFoundException(session);
        var info = current with { ExpiresAtNanos = NowNanos() + (current.Lease.Ticks * 100) };
        await PutAsync(_keys.Session(session), TreeCodec.EncodeSession(info.ExpiresAtNanos, info.Lease)).ConfigureAwait(false);
        return info;
    }

    /// <summary>Ends the session: its record goes, so every node it owns may be taken at once.</summary>
    public Task CloseSessionAsync(string session) => DeleteAsync(_keys.Session(session));

    /// <summary>Who owns the node, and whether another session could take it now.</summary>
    /// <exception cref="NodeNotFoundException">It does not exist.</exception>
    public async Task<OwnerInfo> GetOwnerAsync(Guid id)
    {
        var record = await RequireRecordAsync(id).ConfigureAwait(false);
        if (record.Owner is not { } owner)
        {
            return new OwnerInfo(id, null, null, Lapsed: true);
        }

        var lease = await GetSessionAsync(owner).ConfigureAwait(false);
        return new OwnerInfo(id, owner, lease, Lapsed(lease));
    }

    /// <summary>
    /// <paramref name="session"/> (which must exist with a live lease) takes the nodes: each must be unowned, its own,
    /// or owned by a session whose lease has lapsed (or that is closed).
    /// </summary>
    /// <exception cref="OwnershipHeldException">A node's owner still holds a live lease.</exception>
    public async Task TakeOwnershipAsync(string session, IEnumerable<Guid> nodes)
    {
        ArgumentNullException.ThrowIfNull(nodes);
        await RequireLiveSessionAsync(session).ConfigureAwait(false);
        foreach (var id in nodes)
        {
            if (id == SceneTree.Root)
            {
                throw new RootNodeException("owned");
            }

            var record = await RequireRecordAsync(id).ConfigureAwait(false);
            if (record.Owner == session)
            {
                continue;
            }

            if (record.Owner is { } other)
            {
                var lease = await GetSessionAsync(other).ConfigureAwait(false);
                if (!Lapsed(lease))
                {
                    throw new OwnershipHeldException(id, other, lease!.ExpiresAt);
                }
            }

            await PutRecordAsync(record with { Owner = session }).ConfigureAwait(false);
        }
    }

    /// <summary>Gives up ownership of the nodes (they become unowned). Unowned nodes are left as they are; nodes another session owns are refused.</summary>
    /// <exception cref="NotOwnerException">A node is owned by another session.</exception>
    public async Task ReleaseOwnershipAsync(string session, IEnumerable<Guid> nodes)
    {
        ArgumentNullException.ThrowIfNull(nodes);
        foreach (var id in nodes)
        {
            var record = await RequireRecordAsync(id).ConfigureAwait(false);
            if (record.Owner is null)
            {
                continue;
            }

            if (record.Owner != session)
            {
                throw new NotOwnerException(id, session, record.Owner);
            }

            await PutRecordAsync(record with { Owner = null }).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Hands the node from <paramref name="from"/> (its owner) to <paramref name="to"/> (a session with a live lease)
    /// and writes <paramref name="finalProperties"/> (the old owner's last values; null deletes) in the same
    /// transaction: every write of the old owner is ordered before it, every later one is refused.
    /// </summary>
    /// <exception cref="NotOwnerException"><paramref name="from"/> does not own the node.</exception>
    /// <exception cref="SessionNotFoundException"><paramref name="to"/> does not exist.</exception>
    /// <exception cref="SessionExpiredException"><paramref name="to"/>'s lease has lapsed.</exception>
    public async Task HandoffAsync(string from, string to, Guid node, IReadOnlyDictionary<string, byte[]?>? finalProperties = null)
    {
        if (finalProperties is not null)
        {
            foreach (var name in finalProperties.Keys)
            {
                TreeKeys.ValidatePropertyName(name);
            }
        }

        var record = await RequireRecordAsync(node).ConfigureAwait(false);
        if (record.Owner != from)
        {
            throw new NotOwnerException(node, from, record.Owner);
        }

        await RequireLiveSessionAsync(to).ConfigureAwait(false);
        if (finalProperties is not null)
        {
            await WritePropertiesAsync(record, finalProperties).ConfigureAwait(false);
        }

        await PutRecordAsync(record with { Owner = to }).ConfigureAwait(false);
    }

    // ================================================================ helpers

    /// <summary>
    /// Now, for lease decisions, Unix nanoseconds: the transaction's read timestamp when it offers one, else the local
    /// clock (<see cref="SceneTreeOptions.Time"/>).
    /// </summary>
    internal long NowNanos() => _txn is ITreeTxnClock clock ? clock.ReadTimestampNanos : _tree.NowNanos();

    /// <summary>Another session may take a node of this lease: missing, or expired by more than the max clock offset.</summary>
    private bool Lapsed(SessionInfo? lease) =>
        lease is null || NowNanos() > lease.ExpiresAtNanos + (_tree.Options.MaxClockOffset.Ticks * 100);

    private async Task<SessionInfo> RequireLiveSessionAsync(string session)
    {
        var info = await GetSessionAsync(session).ConfigureAwait(false) ?? throw new SessionNotFoundException(session);
        if (NowNanos() >= info.ExpiresAtNanos)
        {
            throw new SessionExpiredException(session, info.ExpiresAt);
        }

        return info;
    }

    private async Task<NodeRecord> RequireRecordAsync(Guid id) =>
        await GetRecordAsync(id).ConfigureAwait(false) ?? throw new NodeNotFoundException(id);

    private async Task<Placement> ParentPlacementAsync(NodeRecord record) =>
        await LocateAsync(record.Parent).ConfigureAwait(false)
            ?? throw new TreeFormatException($"node {record.Id} names a parent {record.Parent} that does not exist");

    private Task PutRecordAsync(NodeRecord record) => PutAsync(_keys.Record(record.Id, record.Placement), TreeCodec.EncodeRecord(record));

    private async Task<TreeNode> ReadHomeAsync(Guid id, Placement placement, int depth)
    {
        var (start, end) = _keys.HomeSpan(id, placement);
        var rows = await ScanAsync(start, end).ConfigureAwait(false);
        NodeRecord? record = id == SceneTree.Root ? RootRecord : null;
        var properties = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        var entries = new List<ChildEntry>();
        foreach (var row in rows)
        {
            var suffix = row.Key.AsSpan(start.Length);
            switch (suffix[0])
            {
                case TreeKeys.SuffixRecord when suffix.Length == 1:
                    record = TreeCodec.DecodeRecord(row.Value);
                    break;
                case TreeKeys.SuffixChild:
                    entries.Add(DecodeEntry(row, start.Length + 1));
                    break;
                case TreeKeys.SuffixProperty:
                    properties[TreeKeys.FromUtf8(suffix[1..])] = row.Value;
                    break;
                default:
                    break;
            }
        }

        if (record is null)
        {
            throw new TreeFormatException($"node {id}: a locator ({placement}) without a record (the layout's invariants are broken)");
        }

        var children = new List<TreeNode>();
        if (depth > 0)
        {
            foreach (var entry in entries)
            {
                children.Add(await ReadHomeAsync(entry.Id, entry.Placement, depth - 1).ConfigureAwait(false));
            }
        }

        return new TreeNode(record, properties, entries, children);
    }

    /// <summary>A children-index row; <paramref name="nameOffset"/> is where the name starts in the key.</summary>
    private static ChildEntry DecodeEntry(TreeKv row, int nameOffset)
    {
        var (child, placement) = TreeCodec.DecodeChild(row.Value);
        return new ChildEntry(TreeKeys.FromUtf8(row.Key.AsSpan(nameOffset)), child, placement);
    }

    internal static PlannedNode Plan(NodeSpec spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        TreeKeys.ValidateName(spec.Name);
        TreeKeys.ValidateType(spec.Type);
        if (spec.Placement.Region is { } region)
        {
            TreeKeys.ValidateRegion(region);
        }

        if (spec.Owner is { } owner)
        {
            TreeKeys.ValidateSessionId(owner);
        }

        if (spec.Properties is { } props)
        {
            foreach (var name in props.Keys)
            {
                TreeKeys.ValidatePropertyName(name);
            }
        }

        if (spec.Id == SceneTree.Root)
        {
            throw new ArgumentException("the empty UUID is the root's", nameof(spec));
        }

        var children = (spec.Children ?? []).Select(Plan).ToList();
        return new PlannedNode(spec, spec.Id ?? Guid.NewGuid(), spec.Id is not null, children);
    }

    private Task<byte[]?> GetAsync(byte[] key) => _txn.GetAsync(key, _ct);

    private Task<IReadOnlyList<TreeKv>> ScanAsync(byte[] start, byte[] end) => _txn.ScanAsync(start, end, 0, _ct);

    private Task PutAsync(byte[] key, byte[] value) => _txn.PutAsync(key, value, _ct);

    private Task DeleteAsync(byte[] key) => _txn.DeleteAsync(key, _ct);
}

/// <summary>A spec with its UUIDs decided (before the transaction, so retries and an ambiguous outcome name the same nodes).</summary>
internal sealed record PlannedNode(NodeSpec Spec, Guid Id, bool IdGiven, IReadOnlyList<PlannedNode> Children);
