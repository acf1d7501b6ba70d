namespace Canopy.Replication.Raft;

/// <summary>How the leader is sending to one follower (flow control, as in etcd-raft).</summary>
internal enum ProgressState : byte
{
    /// <summary>Unknown match: send one append per heartbeat interval until one is accepted.</summary>
    Probe,

    /// <summary>Known match: stream appends optimistically, bounded by the in-flight window.</summary>
    Replicate,

    /// <summary>The follower needs a snapshot; nothing else is sent until it reports.</summary>
    Snapshot,
}

/// <summary>
/// The leader's view of one follower. <see cref="Match"/> never decreases (raft-pitfalls 5): stale or
/// duplicated responses cannot move it back.
/// </summary>
internal sealed class Progress(ulong next, int maxInflight)
{
    public ulong Match { get; set; }

    public ulong Next { get; set; } = next;

    public ProgressState State { get; private set; } = ProgressState.Probe;

    /// <summary>In Probe: an append is outstanding; wait for a response or the next heartbeat.</summary>
    public bool ProbeSent { get; set; }

    /// <summary>Index of the snapshot in flight (State == Snapshot).</summary>
    public ulong PendingSnapshot { get; private set; }

    /// <summary>Heard from this follower since the last check-quorum round.</summary>
    public bool RecentActive { get; set; }

    /// <summary>The leader's commit index as last sent to this follower (for quiescence).</summary>
    public ulong CommitSent { get; set; }

    public Inflights Inflights { get; } = new(maxInflight);

    public bool IsPaused => State switch
    {
        ProgressState.Probe => ProbeSent,
        ProgressState.Replicate => Inflights.Full,
        _ => true,
    };

    public void BecomeProbe()
    {
        if (State == ProgressState.Snapshot)
        {
            var pending = PendingSnapshot;
            ResetState(ProgressState.Probe);
            Next = Math.Max(Match + 1, pending + 1);
        }
        else
        {
            ResetState(ProgressState.Probe);
            Next = Match + 1;
        }
    }

    public void BecomeReplicate()
    {
        ResetState(ProgressState.Replicate);
        Next = Match + 1;
    }

    public void BecomeSnapshot(ulong index)
    {
        ResetState(ProgressState.Snapshot);
        PendingSnapshot = index;
    }

    /// <summary>A successful response up to <paramref name="index"/>. Returns true if Match advanced.</summary>
    public bool MaybeUpdate(ulong index)
    {
        var updated = false;
        if (Match < index)
        {
            Match = index;
            updated = true;
            ProbeSent = false;
        }

        Next = Math.Max(Next, index + 1);
        return updated;
    }

    /// <summary>
    /// A rejection of the append after <paramref name="rejected"/>, with the follower's hint.
    /// Returns false if the rejection is stale (already past it).
    /// </summary>
    public bool MaybeDecrTo(ulong rejected, ulong hint)
    {
        if (State == ProgressState.Replicate)
        {
            if (rejected <= Match)
            {
                return false;
            }

            Next = Match + 1;
            return true;
        }

        if (Next - 1 != rejected)
        {
            return false;
        }

        Next = Math.Max(Math.Min(rejected, hint + 1), 1);
        Next = Math.Max(Next, Match + 1);
        ProbeSent = false;
        return true;
    }

    /// <summary>Records an append sent up to <paramref name="last"/>.</summary>
    public void SentEntries(ulong last, int count)
    {
        if (State == ProgressState.Replicate)
        {
            if (count > 0)
            {
                Next = last + 1;
                Inflights.Add(last);
            }
        }
        else if (State == ProgressState.Probe)
        {
            ProbeSent = true;
        }
    }

    private void ResetState(ProgressState state)
    {
        ProbeSent = false;
        PendingSnapshot = 0;
        State = state;
        Inflights.Reset();
    }
}

/// <summary>A bounded ring of the last indexes of appends in flight to one follower.</summary>
internal sealed class Inflights(int capacity)
{
    private readonly ulong[] _buffer = new ulong[Math.Max(capacity, 1)];
    private int _start;
    private int _count;

    public bool Full => _count == _buffer.Length;

    public int Count => _count;

    public void Add(ulong last)
    {
        if (Full)
        {
            return;
        }

        _buffer[(_start + _count) % _buffer.Length] = last;
        _count++;
    }

    /// <summary>Frees every append whose last index is at or below <paramref name="index"/>.</summary>
    public void FreeLE(ulong index)
    {
        while (_count > 0 && _buffer[_start] <= index)
        {
            _start = (_start + 1) % _buffer.Length;
            _count--;
        }
    }

    public void Reset()
    {
        _start = 0;
        _count = 0;
    }
}
