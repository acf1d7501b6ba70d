using System.Net;
using System.Net.Sockets;
using Canopy.Transport;

namespace Canopy.Transport.Tests;

/// <summary>Regression: the listener set SO_REUSEPORT (via .NET's ReuseAddress), so two servers could share a port.</summary>
public sealed class PortConflictTests
{
    [Fact]
    public async Task ASecondTransportCannotBindATakenPort()
    {
        var options = new PeerTransportOptions { ClusterSecret = "s" };
        await using var first = new PeerTransport(1, new IPEndPoint(IPAddress.Loopback, 0), options, (_, _, _) => { });
        var ex = Assert.Throws<SocketException>(() => new PeerTransport(2, first.LocalEndPoint, options, (_, _, _) => { }));
        Assert.Equal(SocketError.AddressAlreadyInUse, ex.SocketErrorCode);
    }

    [Fact]
    public async Task ARestartedTransportRebindsItsPortAtOnce()
    {
        var options = new PeerTransportOptions { ClusterSecret = "s" };
        IPEndPoint port;
        await using (var first = new PeerTransport(1, new IPEndPoint(IPAddress.Loopback, 0), options, (_, _, _) => { }))
        {
            port = first.LocalEndPoint;
        }

        await using var again = new PeerTransport(1, port, options, (_, _, _) => { });
        Assert.Equal(port, again.LocalEndPoint);
    }
}
