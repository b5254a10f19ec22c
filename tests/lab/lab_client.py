"""The lab's UDP client (the report's Figures 3 and 4), with its interactive menu replaced by
arguments: LIST, then !CONFIG :<file> :<n>, then !START's n sub-clients, each on its own
socket with the kernel's default receive buffer: TRANSFER, recvfrom(65507) until select()
has waited 5 s in silence, every datagram written to its output file.

usage: lab_client.py IP PORT FILE N OUTDIR
Prints one line per sub-client: "client <i> <bytes> <seconds>" (the seconds include the final
silence, as the lab's did). LAB_SILENCE=<seconds> in the environment shortens the 5 s silence
(the tests use 1 s on loopback and a veth link; the lab's value is the default).
"""
import os
import select
import socket
import sys
import threading
import time

FORMAT = "utf-8"


def connect_client(client_num, addr, num_clients, outdir, results):
    timeout = float(os.environ.get("LAB_SILENCE", "5"))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.sendto("TRANSFER".encode(FORMAT), addr)
    t1 = time.time()
    data, _ = client.recvfrom(65507)
    path = os.path.join(outdir, f"Cliente{client_num}-Prueba{num_clients}.mp4")
    if data:
        with open(path, "wb") as f:
            receiving = True
            f.write(data)
            while receiving:
                receiving = select.select([client], [], [], timeout)[0]
                if receiving:
                    data, _ = client.recvfrom(65507)
                    f.write(data)
                else:
                    f.close()
                    receiving = False
    t2 = time.time()
    results[client_num] = (os.path.getsize(path), t2 - t1)


def main():
    ip, port, name, n, outdir = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
    addr = (ip, port)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(5)
    client.sendto("LIST".encode(FORMAT), addr)
    data, _ = client.recvfrom(1024)
    print("list", data.decode(FORMAT))
    client.sendto(f"!CONFIG :{name} :{n}".encode(FORMAT), addr)
    data, _ = client.recvfrom(1024)
    if data.decode(FORMAT) != "Config set":
        print("config", data.decode(FORMAT))
        sys.exit(1)
    num_clients = n
    results = {}
    threads = []
    for i in range(num_clients):
        t = threading.Thread(target=connect_client, args=(i + 1, addr, num_clients, outdir, results))
        threads.append(t)
        t.start()
    for t in threads:
        t.join()
    for i in sorted(results):
        size, secs = results[i]
        print(f"client {i} {size} {secs:.3f}")


if __name__ == "__main__":
    main()
