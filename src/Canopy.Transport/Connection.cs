// Connection and Peer: the per-socket and per-remote-server state of a PeerTransport.
//
// A Connection owns one socket; Close() is idempotent and thread-safe (shutdown, then dispose). Endpoints are captured
// while the socket is open so diagnostics never touch a disposed socket.
// A Peer holds, under its lock, the one active connection and whether a dial has sent its hello — the state the
// duplicate-connection tie-break reads — plus the peer's bounded send queue and the signal that wakes its send loop.
using System.Net;
using System.Net.Sockets;

namespace Canopy.Transport;

internal sealed class Connection(Socket socket, bool dialedByLocal, long id)
{
    private int _closed;

    public Socket Socket { get; } = socket;

    public bool DialedByLocal { get; } = dialedByLocal;

    /// <summary>Sequence number within the transport, for logs.</summary>
    public long Id { get; } = id;

    public ulong PeerId { get; set; }

    public ulong PeerIncarnation { get; set; }

    public EndPoint? LocalEndPoint { get; private set; }

    public EndPoint? RemoteEndPoint { get; private set; }

    public bool IsClosed => Volatile.Read(ref _closed) != 0;

    public string Describe => $"#{Id} {(DialedByLocal ? "to" : "from")} {RemoteEndPoint?.ToString() ?? "?"}";

    /// <summary>Records the endpoints; call once connected.</summary>
    public void CaptureEndPoints()
    {
        try
        {
            LocalEndPoint = Socket.LocalEndPoint;
            RemoteEndPoint = Socket.RemoteEndPoint;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // Closed already: the connection fails at its next operation.
        }
    }

    /// <summary>Closes the socket once; false if it was already closed.</summary>
    public bool Close()
    {
        if (Interlocked.Exchange(ref _closed, 1) != 0)
        {
            return false;
        }

        try
        {
            Socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // Not connected (or reset): disposing is all that is left.
        }

        Socket.Dispose();
        return true;
    }
}

internal sealed class Peer(ulong id, int queueFrames, long queueBytes)
{
    public ulong Id { get; } = id;

    /// <summary>Guards <see cref="Active"/>, <see cref="DialHelloSent"/>, <see cref="Address"/>.</summary>
    public Lock Lock { get; } = new();

    /// <summary>The one connection carrying traffic, or null. Written under <see cref="Lock"/>; the send loop reads it without.</summary>
    public Connection? Active
    {
        get => Volatile.Read(ref field);
        set => Volatile.Write(ref field, value);
    }

    /// <summary>Our dial to this peer has sent its hello and awaits the answer (the simultaneous-dial state).</summary>
    public bool DialHelloSent { get; set; }

    public EndPoint? Address { get; set; }

    public SendQueue Queue { get; } = new(queueFrames, queueBytes);

    public AsyncSignal Signal { get; } = new();
}
