using System.Buffers.Binary;

namespace Canopy.Replication.Raft;

/// <summary>Kind of a log entry.</summary>
public enum EntryType : byte
{
    /// <summary>A command for the state machine (empty data: the no-op a new leader appends).</summary>
    Normal = 0,

    /// <summary>A configuration change; <see cref="Entry.Data"/> is the encoded new <see cref="ConfState"/>.</summary>
    ConfChange = 1,
}

/// <summary>One Raft log entry. Immutable.</summary>
public readonly record struct Entry(ulong Index, ulong Term, EntryType Type, ReadOnlyMemory<byte> Data)
{
    /// <summary>Approximate size in bytes, for message and batch limits.</summary>
    public int Size => Data.Length + 24;
}

/// <summary>The state that must be durable before a vote or acknowledgement leaves the server.</summary>
public readonly record struct HardState(ulong Term, ulong Vote, ulong Commit)
{
    public static readonly HardState Empty = default;
}

/// <summary>Raft role of a replica.</summary>
public enum RaftRole : byte
{
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// <summary>
/// A group's membership: voters and learners (non-voting replicas that receive the log).
/// Replica ids are server ids (one replica of a group per server). Immutable; arrays are sorted.
/// </summary>
public sealed class ConfState : IEquatable<ConfState>
{
    public static readonly ConfState Empty = new([], []);

    public ConfState(IEnumerable<ulong> voters, IEnumerable<ulong> learners)
    {
        Voters = voters.Distinct().Order().ToArray();
        Learners = learners.Distinct().Where(l => !Voters.Contains(l)).Order().ToArray();
    }

    public ulong[] Voters { get; }

    public ulong[] Learners { get; }

    public bool IsEmpty => Voters.Length == 0 && Learners.Length == 0;

    public bool IsVoter(ulong id) => Array.BinarySearch(Voters, id) >= 0;

    public bool IsLearner(ulong id) => Array.BinarySearch(Learners, id) >= 0;

    public bool Contains(ulong id) => IsVoter(id) || IsLearner(id);

    public IEnumerable<ulong> All => Voters.Concat(Learners);

    public byte[] Encode()
    {
        var buf = new byte[8 + (8 * (Voters.Length + Learners.Length))];
        BinaryPrimitives.WriteInt32LittleEndian(buf, Voters.Length);
        BinaryPrimitives.WriteInt32LittleEndian(buf.AsSpan(4), Learners.Length);
        var off = 8;
        foreach (var v in Voters.Concat(Learners))
        {
            BinaryPrimitives.WriteUInt64LittleEndian(buf.AsSpan(off), v);
            off += 8;
        }

        return buf;
    }

    public static ConfState Decode(ReadOnlySpan<byte> data)
    {
        if (data.Length < 8)
        {
            throw new FormatException("conf state: too short");
        }

        var nv = BinaryPrimitives.ReadInt32LittleEndian(data);
        var nl = BinaryPrimitives.ReadInt32LittleEndian(data[4..]);
        if (nv < 0 || nl < 0 || nv > 1024 || nl > 1024 || data.Length != 8 + (8 * (nv + nl)))
        {
            throw new FormatException("conf state: bad lengths");
        }

        var ids = new ulong[nv + nl];
        for (var i = 0; i < ids.Length; i++)
        {
            ids[i] = BinaryPrimitives.ReadUInt64LittleEndian(data[(8 + (8 * i))..]);
        }

        return new ConfState(ids[..nv], ids[nv..]);
    }

    public bool Equals(ConfState? other) =>
        other is not null && Voters.AsSpan().SequenceEqual(other.Voters) && Learners.AsSpan().SequenceEqual(other.Learners);

    public override bool Equals(object? obj) => Equals(obj as ConfState);

    public override int GetHashCode() => HashCode.Combine(Voters.Length, Learners.Length, Voters.FirstOrDefault());

    public override string ToString() => $"voters=[{string.Join(",", Voters)}] learners=[{string.Join(",", Learners)}]";
}

/// <summary>Where a snapshot (or the compacted prefix of the log) ends, and the membership at that point.</summary>
public sealed record SnapshotMeta(ulong Index, ulong Term, ConfState Conf)
{
    public static readonly SnapshotMeta Empty = new(0, 0, ConfState.Empty);
}

/// <summary>A state-machine snapshot: the state as of <see cref="SnapshotMeta.Index"/>.</summary>
public sealed record Snapshot(SnapshotMeta Meta, ReadOnlyMemory<byte> Data);

/// <summary>Raft message kinds. Responses carry the responder's term.</summary>
public enum MessageType : byte
{
    /// <summary>"Would you vote for me at Term?" — sent without raising the sender's term.</summary>
    PreVote = 1,
    PreVoteResp = 2,
    Vote = 3,
    VoteResp = 4,

    /// <summary>Entries after (Index, LogTerm), and the leader's commit index.</summary>
    Append = 5,

    /// <summary>Success: Index = last index now matching the leader. Reject: Index = the rejected prev index, RejectHint/LogTerm = a probe hint.</summary>
    AppendResp = 6,

    /// <summary>Commit = min(leader commit, follower match). Context may carry <see cref="MessageFlags.Quiesce"/>.</summary>
    Heartbeat = 7,
    HeartbeatResp = 8,

    /// <summary>A full state-machine snapshot; answered with AppendResp.</summary>
    InstallSnapshot = 9,

    /// <summary>Leadership transfer: the target campaigns at once, without pre-vote.</summary>
    TimeoutNow = 10,
}

/// <summary>Bit flags carried in <see cref="Message.Flags"/>.</summary>
[Flags]
public enum MessageFlags : byte
{
    None = 0,

    /// <summary>A vote request caused by a leadership transfer: voters ignore their leader lease.</summary>
    Transfer = 1,

    /// <summary>On a heartbeat: the group is idle, stop ticking until the next message.</summary>
    Quiesce = 2,
}

/// <summary>
/// One Raft message between two replicas of a group. Replica ids are server ids.
/// Immutable once sent.
/// </summary>
public sealed record Message
{
    public required MessageType Type { get; init; }

    public required ulong Group { get; init; }

    public required ulong From { get; init; }

    public required ulong To { get; init; }

    public required ulong Term { get; init; }

    public ulong LogTerm { get; init; }

    public ulong Index { get; init; }

    public Entry[] Entries { get; init; } = [];

    public ulong Commit { get; init; }

    public bool Reject { get; init; }

    public ulong RejectHint { get; init; }

    public MessageFlags Flags { get; init; }

    public Snapshot? Snapshot { get; init; }

    public override string ToString() =>
        $"{Type} g{Group} {From}->{To} t{Term} lt{LogTerm} i{Index} n{Entries.Length} c{Commit}{(Reject ? $" reject(hint {RejectHint})" : string.Empty)} {Flags}";
}
