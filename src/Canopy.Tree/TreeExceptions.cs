namespace Canopy.Tree;

using Canopy.Client;

/// <summary>
/// A tree operation was refused: its transaction was rolled back and wrote nothing. The message is one line.
/// </summary>
public abstract class TreeException : Exception
{
    protected TreeException(string message, Exception? innerException = null)
        : base(message, innerException)
    {
    }
}

/// <summary>A node the operation needs does not exist (never spawned, or freed).</summary>
public sealed class NodeNotFoundException(Guid node)
    : TreeException($"node {node} does not exist")
{
    public Guid Node { get; } = node;
}

/// <summary>The parent already has a child of that name (sibling names are unique).</summary>
public sealed class NameConflictException(Guid parent, string name, Guid existing)
    : TreeException($"node {parent} already has a child named '{name}' ({existing})")
{
    public Guid Parent { get; } = parent;

    public string Name { get; } = name;

    /// <summary>The child that holds the name.</summary>
    public Guid Existing { get; } = existing;
}

/// <summary>Reparenting a node under itself or one of its descendants.</summary>
public sealed class TreeCycleException(Guid node, Guid newParent)
    : TreeException($"cannot move node {node} under {newParent}: {newParent} is the node itself or one of its descendants")
{
    public Guid Node { get; } = node;

    public Guid NewParent { get; } = newParent;
}

/// <summary>A write to properties of a node another session owns.</summary>
public sealed class NotOwnerException(Guid node, string? session, string? owner)
    : TreeException(owner is null
        ? $"node {node} has no owner; session '{session}' cannot act as its owner"
        : $"node {node} is owned by session '{owner}'; {(session is null ? "a write without a session" : $"session '{session}'")} may not write its properties or hand it over")
{
    public Guid Node { get; } = node;

    /// <summary>The session that tried (null: none).</summary>
    public string? Session { get; } = session;

    /// <summary>The owning session (null: the node has no owner, for operations only an owner may do).</summary>
    public string? Owner { get; } = owner;
}

/// <summary>Spawning a node with a UUID that is already in use.</summary>
public sealed class NodeExistsException(Guid node)
    : TreeException($"node {node} already exists")
{
    public Guid Node { get; } = node;
}

/// <summary>Taking a node whose owner's lease is still live.</summary>
public sealed class OwnershipHeldException(Guid node, string owner, DateTimeOffset expiresAt)
    : TreeException($"node {node} is owned by session '{owner}' whose lease runs until {expiresAt:O}")
{
    public Guid Node { get; } = node;

    public string Owner { get; } = owner;

    public DateTimeOffset ExpiresAt { get; } = expiresAt;
}

/// <summary>A session that does not exist (never opened, or closed).</summary>
public sealed class SessionNotFoundException(string session)
    : TreeException($"session '{session}' does not exist")
{
    public string Session { get; } = session;
}

/// <summary>A session whose lease has lapsed, used where a live one is required (taking, receiving a handoff).</summary>
public sealed class SessionExpiredException(string session, DateTimeOffset expiredAt)
    : TreeException($"the lease of session '{session}' lapsed at {expiredAt:O}; renew it first")
{
    public string Session { get; } = session;

    public DateTimeOffset ExpiredAt { get; } = expiredAt;
}

/// <summary>Freeing, renaming, moving or reparenting the (virtual) root.</summary>
public sealed class RootNodeException(string operation)
    : TreeException($"the root cannot be {operation}")
{
}

/// <summary>A record that does not decode (an unknown format version or damage).</summary>
public sealed class TreeFormatException(string message)
    : TreeException(message)
{
}

/// <summary>
/// The operation's transaction did not commit: aborted (after the runner's retries) or ambiguous (it may or may not
/// have happened). <see cref="Result"/> says which.
/// </summary>
public sealed class TreeTransactionException(TransactionResult result)
    : TreeException($"the tree transaction {(result?.Outcome == TransactionOutcome.Ambiguous ? "is ambiguous" : "aborted")}: {result?.Reason}")
{
    public TransactionResult Result { get; } = result ?? throw new ArgumentNullException(nameof(result));

    public bool Ambiguous => Result.Outcome == TransactionOutcome.Ambiguous;
}
