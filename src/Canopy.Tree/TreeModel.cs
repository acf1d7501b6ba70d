namespace Canopy.Tree;

/// <summary>
/// Where a node's keys live: by the hash of its UUID (the default), or in a region the caller names (spatial
/// locality: every node of a region shares one key prefix, so a region is one contiguous span of one range).
/// </summary>
public readonly record struct Placement
{
    private Placement(string? region) => Region = region;

    /// <summary>Placed by the hash of the node's UUID.</summary>
    public static Placement Hashed => default;

    /// <summary>The region id, or null for hash placement.</summary>
    public string? Region { get; }

    public bool IsHashed => Region is null;

    /// <summary>Placement in region <paramref name="region"/> (1 to <see cref="TreeKeys.MaxRegionBytes"/> bytes of UTF-8).</summary>
    public static Placement InRegion(string region)
    {
        TreeKeys.ValidateRegion(region);
        return new Placement(region);
    }

    public override string ToString() => Region is null ? "hash" : $"region:{Region}";
}

/// <summary>What a node instantiates.</summary>
public enum NodeKind : byte
{
    /// <summary>A class name (Node3D, CharacterBody2D, a class_name script).</summary>
    Class = 0,

    /// <summary>A scene path (res://player.tscn).</summary>
    Scene = 1,
}

/// <summary>The stored record of one node.</summary>
/// <param name="Id">The node's UUID.</param>
/// <param name="Parent">The parent's UUID (<see cref="SceneTree.Root"/> for a top-level node).</param>
/// <param name="Name">The name, unique among its siblings.</param>
/// <param name="Kind">Whether <paramref name="Type"/> is a class name or a scene path.</param>
/// <param name="Type">The class name or scene path.</param>
/// <param name="Owner">The owning session id, or null.</param>
/// <param name="Placement">Where its keys live.</param>
public sealed record NodeRecord(Guid Id, Guid Parent, string Name, NodeKind Kind, string Type, string? Owner, Placement Placement);

/// <summary>One entry of a parent's children index.</summary>
/// <param name="Name">The child's name (the index key).</param>
/// <param name="Id">The child's UUID.</param>
/// <param name="Placement">The child's placement (kept equal to the child's locator).</param>
public sealed record ChildEntry(string Name, Guid Id, Placement Placement);

/// <summary>A node as read in one transaction: its record, properties and children index, and (in a subtree read) its children.</summary>
public sealed record TreeNode(NodeRecord Record, IReadOnlyDictionary<string, byte[]> Properties, IReadOnlyList<ChildEntry> ChildEntries, IReadOnlyList<TreeNode> Children)
{
    public Guid Id => Record.Id;

    public string Name => Record.Name;

    /// <summary>This node and every descendant read, depth first.</summary>
    public IEnumerable<TreeNode> SelfAndDescendants()
    {
        var stack = new Stack<TreeNode>();
        stack.Push(this);
        while (stack.Count > 0)
        {
            var n = stack.Pop();
            yield return n;
            for (var i = n.Children.Count - 1; i >= 0; i--)
            {
                stack.Push(n.Children[i]);
            }
        }
    }
}

/// <summary>A subtree read in one transaction, as of <see cref="Timestamp"/> (the read-only transaction's commit timestamp).</summary>
public sealed record TreeSnapshot(TreeNode Root, string? Timestamp);

/// <summary>What to spawn: one node and, optionally, its subtree.</summary>
/// <param name="Name">The node's name (unique among its siblings; see <see cref="TreeKeys.ValidateName"/>).</param>
/// <param name="Kind">Class name or scene path.</param>
/// <param name="Type">The class name or scene path.</param>
public sealed record NodeSpec(string Name, NodeKind Kind, string Type)
{
    /// <summary>The UUID to give it; null: a new random one.</summary>
    public Guid? Id { get; init; }

    public Placement Placement { get; init; }

    /// <summary>Initial property values (opaque bytes: Godot Variant encoded by the caller).</summary>
    public IReadOnlyDictionary<string, byte[]>? Properties { get; init; }

    public IReadOnlyList<NodeSpec>? Children { get; init; }

    /// <summary>A session that owns the node from the start (it must exist and its lease be live). Not inherited by children.</summary>
    public string? Owner { get; init; }

    public static NodeSpec Class(string name, string className) => new(name, NodeKind.Class, className);

    public static NodeSpec Scene(string name, string scenePath) => new(name, NodeKind.Scene, scenePath);
}

/// <summary>The UUIDs a spawn gave, in the shape of the spec.</summary>
public sealed record SpawnedNode(Guid Id, string Name, IReadOnlyList<SpawnedNode> Children)
{
    public IEnumerable<Guid> AllIds()
    {
        yield return Id;
        foreach (var c in Children)
        {
            foreach (var id in c.AllIds())
            {
                yield return id;
            }
        }
    }
}

/// <summary>Property writes for one node: a null value deletes the property.</summary>
public sealed record NodeProperties(Guid Node, IReadOnlyDictionary<string, byte[]?> Values)
{
    /// <summary>
    /// Where the writer believes the node lives (an owner knows its nodes): its record is then read there directly,
    /// without the locator; if it is not there (the node moved), the locator is read as usual.
    /// </summary>
    public Placement? PlacementHint { get; init; }
}

/// <summary>A session's lease as stored.</summary>
/// <param name="Id">The session id.</param>
/// <param name="ExpiresAtNanos">Expiry, Unix nanoseconds of the writer's clock (the unit of HLC wall time).</param>
/// <param name="Lease">The lease duration it renews with.</param>
public sealed record SessionInfo(string Id, long ExpiresAtNanos, TimeSpan Lease)
{
    public DateTimeOffset ExpiresAt => DateTimeOffset.FromUnixTimeMilliseconds(ExpiresAtNanos / 1_000_000);
}

/// <summary>Who owns a node now.</summary>
/// <param name="Node">The node.</param>
/// <param name="Session">The owning session, or null.</param>
/// <param name="Lease">That session's record (null: missing, i.e. lapsed or closed).</param>
/// <param name="Lapsed">True when another session may take the node (no owner, owner's session missing, or its lease lapsed by the reader's clock with the max offset as margin).</param>
public sealed record OwnerInfo(Guid Node, string? Session, SessionInfo? Lease, bool Lapsed);

/// <summary>Switches of a <see cref="SceneTree"/>.</summary>
public sealed record SceneTreeOptions
{
    /// <summary>Lease of a session opened without one (DESIGN §9: 5 s).</summary>
    public TimeSpan DefaultLease { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// The cluster's maximum clock offset (500 ms). A lease counts as lapsed for others only once their clock is past
    /// its expiry plus this margin, so a holder whose clock is behind never loses a lease it still believes in.
    /// </summary>
    public TimeSpan MaxClockOffset { get; init; } = TimeSpan.FromMilliseconds(500);

    /// <summary>The clock for lease times (tests may inject one).</summary>
    public TimeProvider Time { get; init; } = TimeProvider.System;
}
