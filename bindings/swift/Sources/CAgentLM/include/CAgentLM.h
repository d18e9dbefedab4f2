/* The C module Swift imports: the library's one header, from the repository's include/ (never a copy). */
#ifndef CAGENTLM_H
#define CAGENTLM_H
#include "../../../../../include/agentlm.h"
#endif
