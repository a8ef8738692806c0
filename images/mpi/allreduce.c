/* The mpi test image's job: an allreduce across every rank, and a check that ranks on one
 * node share memory across their containers (one POSIX shm object in the host's /dev/shm).
 * Prints one line per rank:
 *   rank R/N sum S shm ok|FAILED procid P ompi W pmix yes|no
 * S must be N*(N+1)/2; P is $SLURM_PROCID ("-" outside Slurm), W $OMPI_COMM_WORLD_SIZE.
 */
#include <fcntl.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static const char *env_or_dash(const char *name) {
    const char *value = getenv(name);
    return value && *value ? value : "-";
}

/* The node's first rank writes its pid into a shm object the node's other ranks read. */
static int shared_memory_works(MPI_Comm node, int world_rank) {
    int local;
    MPI_Comm_rank(node, &local);
    char name[96];
    int root_world = world_rank;
    MPI_Bcast(&root_world, 1, MPI_INT, 0, node);
    snprintf(name, sizeof name, "/boxrun-mpi-%s-%d", env_or_dash("PMIX_NAMESPACE"), root_world);
    for (char *c = name + 1; *c; c++)
        if (*c == '/') *c = '_';
    long expected = 0;
    if (local == 0) {
        int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
        if (fd < 0 || ftruncate(fd, sizeof(long)) != 0) return 0;
        long *value = mmap(NULL, sizeof(long), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (value == MAP_FAILED) return 0;
        *value = expected = 1000000 + (long)getpid();
        close(fd);
    }
    MPI_Bcast(&expected, 1, MPI_LONG, 0, node);
    long seen = -1;
    int fd = shm_open(name, O_RDONLY, 0);
    if (fd >= 0) {
        long *value = mmap(NULL, sizeof(long), PROT_READ, MAP_SHARED, fd, 0);
        if (value != MAP_FAILED) seen = *value;
        close(fd);
    }
    MPI_Barrier(node);
    if (local == 0) shm_unlink(name);
    return seen == expected;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int mine = rank + 1, sum = 0;
    MPI_Allreduce(&mine, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    int shm = shared_memory_works(node, rank);
    printf("rank %d/%d sum %d shm %s procid %s ompi %s pmix %s\n", rank, size, sum, shm ? "ok" : "FAILED",
           env_or_dash("SLURM_PROCID"), env_or_dash("OMPI_COMM_WORLD_SIZE"),
           getenv("PMIX_RANK") ? "yes" : "no");
    fflush(stdout);
    MPI_Comm_free(&node);
    MPI_Finalize();
    return 0;
}
