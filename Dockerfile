# coffer in a container: the statically linked binary and nothing else.
# Build the binary first (make docker does both): no base image is pulled.
FROM scratch
COPY bin/coffer /coffer
VOLUME ["/data"]
EXPOSE 8200 8400 8401 8402 8402/udp
ENTRYPOINT ["/coffer"]
CMD ["server", "-dev", "-api-addr=0.0.0.0:8400", "-http-addr=0.0.0.0:8200"]
